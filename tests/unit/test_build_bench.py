"""bench/build_bench.py's pure helpers: the step counts its cache checks expect, the
subordinate id range it gives the rootless rows' user, and the ratio tables. The benchmark
itself runs builds as root and a normal user; it is run by hand (bench/README.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The script as a module (bench/ is not a package); its import has no side effects."""
    path = PROJECT / "bench" / "build_bench.py"
    spec = importlib.util.spec_from_file_location("build_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_bench"] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["build_bench"]
    return module


def test_the_workload_counts_workdir_as_a_cached_step(bench: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM base\n# a comment\nRUN mkdir -p /app\nCOPY data/ /app/data/\nRUN rm x\n"
        "ENV FOO=bar\nWORKDIR /app\nCMD [\"sh\"]\n")
    work = bench.workload("app", tmp_path)
    assert (work.cacheable, work.before_copy) == (4, 1)


def test_a_workdir_before_the_first_copy_stays_cached_after_a_change(
        bench: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM base\nWORKDIR /w\nRUN true\nADD a /a\n")
    assert bench.workload("w", tmp_path).before_copy == 2


def test_the_new_range_starts_past_every_existing_one(bench: ModuleType) -> None:
    subuid = "alice:100000:65536\nbob:165536:65536\n# comment\nbroken:line\n"
    subgid = "alice:100000:65536\ncarol:300000:1000\n"
    assert bench.subid_end([subuid, subgid]) == 301000
    assert bench.subid_end(["", ""]) == 100000  # useradd's first


def test_a_range_is_found_by_name_or_uid_and_taken_out_by_name(bench: ModuleType) -> None:
    text = "alice:100000:65536\n1005:165536:65536\n"
    assert bench.has_subids(text, "alice", 1000)
    assert bench.has_subids(text, "dave", 1005)
    assert not bench.has_subids(text, "al", 1001)
    assert bench.without_subids(text, "alice") == "1005:165536:65536\n"


def test_ratios_are_each_median_over_the_reference(bench: ModuleType) -> None:
    def cell(median: float | None) -> dict[str, float | None]:
        return {"median": median}

    cells = {"stepbuild-rootless": {"noop": cell(0.1), "cold": cell(2.0)},
             "buildah-rootless": {"noop": cell(0.5), "cold": cell(None)}}
    assert bench._ratios(cells, "stepbuild-rootless", ["buildah-rootless"],
                         ["noop", "cold"]) == {"buildah-rootless": {"noop": 5.0, "cold": None}}
    assert bench._ratios(cells, "stepbuild", ["buildah-rootless"], ["noop"]) == {}
