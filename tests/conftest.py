"""Shared test configuration: where the external conformance suites are; root-only tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"

# Property tests: `make test` replays the same examples on every run (derandomized, nothing read
# from or saved to a database), so a run is red or green for the code alone. `make fuzz` sets
# STEPBUILD_HYPOTHESIS=explore: new random examples, many more of them, failures kept.
settings.register_profile("fixed", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", max_examples=2000, print_blob=True)
settings.load_profile(os.environ.get("STEPBUILD_HYPOTHESIS", "fixed"))


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    """../shared/conformance; a missing suite is a failure, not a skip."""
    path = SHARED / "conformance"
    if not path.is_dir():
        pytest.fail(f"conformance suites not found at {path} (CI lays shared/ beside the clone)")
    return path


@pytest.fixture(autouse=True)
def root_marked_tests_need_root(request: pytest.FixtureRequest) -> None:
    """A test marked `root` fails without root instead of skipping: `make test` runs as root,
    and a suite that silently skips its privileged half proves nothing."""
    if request.node.get_closest_marker("root") and os.geteuid() != 0:
        pytest.fail("this test needs root (mknod, chown, trusted.* xattrs): run it as root")
