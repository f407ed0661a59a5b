"""bench/emulation_bench.py's pure parts: the Stepfiles it builds, the check of the CPU step,
the peers' commands with a platform, and the per-RUN costs and ratio table it reports. The
benchmark itself builds as root under QEMU; it is run by hand (bench/README.md)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The script as a module (bench/ is not a package); its import has no side effects."""
    path = PROJECT / "bench" / "emulation_bench.py"
    spec = importlib.util.spec_from_file_location("emulation_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["emulation_bench"] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["emulation_bench"]
    return module


def test_the_three_stepfiles_differ_only_by_their_run_steps(bench: ModuleType) -> None:
    empty, execs, cpu = (bench.stepfile("sb-emu-arm64", w, 3).splitlines()
                         for w in ("empty", "execs", "cpu"))
    assert empty == ["FROM sb-emu-arm64", "LABEL bench=emulation"]
    assert execs[1:4] == ["RUN for i in 1 2 3 4 5; do /bin/true; done"] * 3
    assert [execs[0], execs[-1]] == empty and len(execs) == 5
    assert cpu[1].startswith("RUN uname -m > /arch && head -c 16777216 /dev/zero | sha256sum")
    assert [cpu[0], cpu[-1]] == empty and len(cpu) == 3


def test_the_cpu_check_names_the_machine_and_the_digest_of_the_zeros(
        bench: ModuleType) -> None:
    check = bench.cpu_check("arm64")
    assert 'test "$(cat /arch)" = aarch64' in check
    assert hashlib.sha256(b"\0" * 16 * 1024 * 1024).hexdigest() in check
    assert check.endswith("echo CONTENT-OK")
    assert "= x86_64 " in bench.cpu_check("amd64")


def test_a_peer_command_gets_the_platform_before_its_tag(bench: ModuleType) -> None:
    argv = ["buildah", "--root", "/w/r", "bud", "--isolation", "chroot", "--no-cache", "-t",
            "out", "-f", "/c/Dockerfile", "/c"]
    assert bench.with_platform(argv, "arm64") == [
        "buildah", "--root", "/w/r", "bud", "--isolation", "chroot", "--no-cache",
        "--platform", "linux/arm64", "-t", "out", "-f", "/c/Dockerfile", "/c"]
    assert bench.tool_prefix(argv) == ["buildah", "--root", "/w/r"]
    docker = ["env", "DOCKER_BUILDKIT=1", "DOCKER_HOST=unix:///w/d.sock", "/usr/bin/docker",
              "build", "--network", "none", "-t", "out-bk", "/c"]
    assert bench.tool_prefix(docker) == docker[:4]


def _times(empty: list[float], execs: list[float], cpu: list[float],
           builder: str = "stepbuild", arch: str = "amd64") -> dict:
    return {(builder, arch, "empty"): empty, (builder, arch, "execs"): execs,
            (builder, arch, "cpu"): cpu}


def test_per_run_costs_take_the_empty_build_out_round_by_round(bench: ModuleType) -> None:
    times = _times([1.0, 2.0], [1.5, 2.1], [1.3, 2.8])
    costs = bench.per_run_costs(times, "stepbuild", "amd64", runs=10)
    assert costs["execs"] == pytest.approx([50.0, 10.0])
    assert costs["cpu"] == pytest.approx([300.0, 800.0])
    # a failed build leaves its round out; nothing measured gives no cost
    short = bench.per_run_costs(_times([1.0, 2.0], [1.5], []), "stepbuild", "amd64", 10)
    assert short == {"execs": [pytest.approx(50.0)], "cpu": []}


def _table(bench: ModuleType) -> list:
    times = {**_times([1.0] * 3, [1.2] * 3, [1.1] * 3),  # 20 ms exec-RUN, 100 ms CPU
             **_times([1.0] * 3, [1.6] * 3, [2.0] * 3, arch="arm64"),  # 60, 1000
             **_times([2.0] * 3, [6.0] * 3, [2.5] * 3, "buildah-overlay"),  # 400, 500
             **_times([2.0] * 3, [7.0] * 3, [3.4] * 3, "buildah-overlay", "arm64")}  # 500, 1400
    return bench.rows(times, ["stepbuild", "buildah-overlay", "podman"], runs=10)


def test_rows_give_medians_and_the_emulation_overhead(bench: ModuleType) -> None:
    ours, buildah, podman = _table(bench)
    assert ours.native["execs"].median == pytest.approx(20.0)
    assert ours.emulated["cpu"].median == pytest.approx(1000.0)
    assert ours.overhead("execs") == pytest.approx(40.0)
    assert buildah.overhead("cpu") == pytest.approx(900.0)
    assert podman.overhead("execs") is None  # never measured: FAILED in the table
    assert podman.native["cpu"].text() == "FAILED"


def test_ratios_are_stepbuild_over_each_peer(bench: ModuleType) -> None:
    ratio = bench.ratios(_table(bench))
    assert list(ratio) == ["buildah-overlay", "podman"]
    assert ratio["buildah-overlay"] == pytest.approx(
        [20 / 400, 60 / 500, 40 / 100, 100 / 500, 1000 / 1400, 900 / 900])
    assert ratio["podman"] == [None] * 6
    assert bench.ratios(_table(bench)[1:]) == {}  # no stepbuild row, no ratios


def test_the_report_has_a_row_per_builder_and_says_what_failed(bench: ModuleType) -> None:
    text = bench.render(_table(bench), {"podman arm64 cpu": ["r1: build failed (125): x"]},
                        {"docker-buildkit": "importing busybox-arm64.oci.tar failed: y"}, 10)
    lines = text.splitlines()
    assert "| stepbuild | 20.0 (20.0-20.0) | 60.0 (60.0-60.0) | +40.0 |" in text
    assert "| podman | FAILED | FAILED | - | FAILED | FAILED | - |" in lines
    assert "| buildah-overlay | 0.05 | 0.12 | 0.40 | 0.20 | 0.71 | 1.00 |" in lines
    assert "docker-buildkit: CANNOT RUN: importing busybox-arm64.oci.tar failed: y" in text
    assert "podman arm64 cpu FAILED r1: build failed (125): x" in lines


def test_a_timed_build_gives_its_exit_status_and_its_output_to_the_log(
        bench: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    with log.open("w") as out:
        rc, seconds = bench.bb.timed_run(["sh", "-c", "echo built; echo oops >&2; exit 3"], {},
                                      out)
    assert rc == 3 and isinstance(seconds, float)
    assert log.read_text().splitlines() == ["built", "oops"]
