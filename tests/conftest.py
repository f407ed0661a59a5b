"""Shared test configuration: where the external conformance suites are."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    """../shared/conformance; a missing suite is a failure, not a skip."""
    path = SHARED / "conformance"
    if not path.is_dir():
        pytest.fail(f"conformance suites not found at {path} (CI lays shared/ beside the clone)")
    return path
