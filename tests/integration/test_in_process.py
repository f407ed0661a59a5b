"""Builds run in this process (`cli.main`), as a program using stepbuild as a library would:
they leave no descriptor, connection or thread behind.

The CLI exits after one build, so a leak there costs nothing; in a long-lived process it adds
up (stop 8's CI failure came from such leaks: one temp-file descriptor per registry cache
import and export, registry sessions left to the garbage collector).
"""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import pytest

from stepbuild.cli.main import main
from stepbuild.teamcache.cache import TeamCache
from tests.hostwatch import open_descriptors
from tests.integration import registry_fixture
from tests.integration.builds import EPOCH, Stepbuild, base_image, write_context

pytestmark = pytest.mark.root

plain_registry = registry_fixture.plain_registry

STEPFILE = (
    "FROM base AS builder\n"
    "RUN --mount=type=cache,target=/c echo built > /c/seen && echo tool > /tool\n"
    "FROM base\n"
    "COPY --from=builder /tool /tool\n"
    "COPY data.txt /data.txt\n"
    'CMD ["cat", "/tool"]\n'
)


def build_in_process(root: Path, context: Path, *args: str) -> None:
    assert main(["--root", str(root), "build", "-q", "-t", "app", *EPOCH, *args,
                 str(context)]) == 0


def test_builds_with_the_team_cache_leave_nothing_open(
        tmp_path: Path, plain_registry: registry_fixture.RunningRegistry) -> None:
    for name in ("a", "b"):  # the base, built by the CLI in a child process
        base_image(Stepbuild(tmp_path / name), tmp_path, *EPOCH)
    context = write_context(tmp_path / "ctx", STEPFILE, {"data.txt": "data\n"})
    ref = f"{plain_registry.host}/inproc/cache:main"
    local = tmp_path / "cache"
    threads = set(threading.enumerate())
    before = open_descriptors()
    build_in_process(tmp_path / "a", context, "--cache-to",
                     f"type=registry,ref={ref},mode=max,cache-mounts=true",
                     "--cache-to", f"type=local,dest={local},mode=max")
    build_in_process(tmp_path / "b", context, "--cache-from", f"type=registry,ref={ref}",
                     "--cache-from", f"type=local,src={local}")
    build_in_process(tmp_path / "b", context, "--no-cache", "--cache-to",
                     f"type=local,dest={tmp_path / 'again'}")
    assert main(["--root", str(tmp_path / "b"), "push", "app",
                 f"{plain_registry.host}/inproc/app:1"]) == 0
    gc.collect()  # what is garbage may be closed; what is still referenced may not
    # each build's team cache, the observer of its cache mounts, went with its build: nothing
    # process-wide (a registry of observers, a cache keyed by executor) holds on to it
    assert not [o for o in gc.get_objects() if isinstance(o, TeamCache)]
    left = sorted(target for _, target in open_descriptors() - before)
    assert left == [], "left open by in-process builds"
    assert set(threading.enumerate()) <= threads, "threads left running"
