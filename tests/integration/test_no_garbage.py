"""A killed build or export leaves no garbage behind for long (issue 11, item 15).

Each test starts the real CLI in a subprocess, waits for a marker that says it is in the
middle of its work (a RUN's output, the export's temp file), and kills it: SIGKILL leaves its
temp work behind, which `check` lists and the next command removes; SIGTERM makes it clean up
itself and exit 143.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.builds import PROJECT, Stepbuild, base_image, write_context

MARKER = "halfway-through-the-step"
BIG = 64 << 20  # the exported image's file: big enough that a write takes a while


@pytest.fixture(scope="module")
def sb(tmp_path_factory: pytest.TempPathFactory) -> Stepbuild:
    workdir = tmp_path_factory.mktemp("no-garbage")
    store = Stepbuild(workdir / "store")
    base_image(store, workdir)
    context = write_context(workdir / "big", f"FROM base\nRUN head -c {BIG} /dev/urandom > /big\n")
    store.build(context, "-q", "-t", "big")
    return store


def _start(sb: Stepbuild, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "STEPBUILD_ROOT": str(sb.root), "PYTHONPATH": str(PROJECT)}
    return subprocess.Popen([sys.executable, "-m", "stepbuild", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _build_until_marker(sb: Stepbuild, tmp_path: Path) -> subprocess.Popen[str]:
    """A build whose RUN writes 20 MB, says MARKER and then waits for ever."""
    context = write_context(tmp_path / "context", "FROM base\nRUN head -c 20000000 /dev/zero"
                            f" > /junk && echo {MARKER} && sleep 1000\n")
    build = _start(sb, "build", "--no-cache", str(context))
    assert build.stderr is not None
    for line in build.stderr:
        if MARKER in line and "echo" not in line:
            return build
    build.wait()
    pytest.fail(f"the build ended before the marker: {build.returncode}")


def _tmp_entries(sb: Stepbuild) -> list[str]:
    return sorted(os.listdir(sb.root / "tmp"))


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if str(path) in line]


def test_a_killed_build_leaves_work_that_check_lists_and_the_next_build_removes(
        sb: Stepbuild, tmp_path: Path) -> None:
    build = _build_until_marker(sb, tmp_path)
    build.kill()
    build.communicate()
    leftovers = _tmp_entries(sb)
    assert any(name.startswith("step-@") and f".{build.pid}." in name for name in leftovers)
    report = sb("check").stdout
    assert "stale work of dead builders" in report, report
    assert "tmp/step-@" in report and "MB" in report, report
    assert _tmp_entries(sb) == leftovers  # check only lists it
    context = write_context(tmp_path / "next", "FROM base\nRUN true\n")
    sb.build(context, "-q", "--no-cache")
    assert _tmp_entries(sb) == []
    assert _mounts_under(sb.root) == []
    assert "stale work" not in sb("check").stdout


def test_sigterm_stops_a_build_that_cleans_up_and_exits_143(sb: Stepbuild,
                                                            tmp_path: Path) -> None:
    build = _build_until_marker(sb, tmp_path)
    build.send_signal(signal.SIGTERM)
    _, stderr = build.communicate()
    assert build.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr, stderr
    assert _tmp_entries(sb) == []
    assert "stale work" not in sb("check").stdout


def test_sigterm_stops_parallel_stages_and_their_steps(sb: Stepbuild, tmp_path: Path) -> None:
    run = f"RUN head -c 1000000 /dev/zero > /junk && echo {MARKER} && sleep 1000"
    context = write_context(tmp_path / "context", f"FROM base AS one\n{run}\n"
                            f"FROM base AS two\n{run} two\nFROM base\n"
                            "COPY --from=one /junk /1\nCOPY --from=two /junk /2\n")
    build = _start(sb, "build", "--no-cache", "--jobs", "2", str(context))
    assert build.stderr is not None
    markers = 0
    for line in build.stderr:
        markers += MARKER in line and "echo" not in line
        if markers == 2:
            break
    assert markers == 2, build.communicate()
    build.send_signal(signal.SIGTERM)
    try:  # the stage threads' RUN steps are killed too: nothing waits for `sleep 1000`
        _, stderr = build.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        build.kill()
        build.communicate()
        raise
    assert build.returncode == 128 + signal.SIGTERM, stderr
    assert _tmp_entries(sb) == []


@pytest.fixture
def export_dest(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "out" / "image.tar"


def _export_until_temp_file(sb: Stepbuild, dest: Path) -> subprocess.Popen[str]:
    """An export of the big image, caught while it writes its temp file beside `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    export = _start(sb, "export", "big", "--output", f"type=tar,dest={dest}")
    while export.poll() is None:
        if any(p.stat().st_size for p in dest.parent.glob(f".{dest.name}.*.tmp")):
            return export
    pytest.fail(f"the export ended before its temp file had data: {export.communicate()}")


def test_a_killed_export_leaves_a_temp_file_the_next_export_removes(
        sb: Stepbuild, export_dest: Path) -> None:
    export = _export_until_temp_file(sb, export_dest)
    export.kill()
    export.communicate()
    assert list(export_dest.parent.glob(f".{export_dest.name}.*.tmp"))
    assert not export_dest.exists()
    sb("export", "big", "--output", f"type=tar,dest={export_dest}")
    assert os.listdir(export_dest.parent) == [export_dest.name]
    assert _tmp_entries(sb) == []  # the killed export's flatten- dir went with the lock


def test_sigterm_stops_an_export_that_removes_its_temp_file(sb: Stepbuild,
                                                            export_dest: Path) -> None:
    export = _export_until_temp_file(sb, export_dest)
    export.send_signal(signal.SIGTERM)
    _, stderr = export.communicate()
    assert export.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr, stderr
    assert os.listdir(export_dest.parent) == []
    assert _tmp_entries(sb) == []
