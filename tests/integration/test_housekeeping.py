"""Housekeeping with real builds (issue 16): `du`, `prune` by last use (LRU), its flags and
confirmation, and the automatic GC after a build.

The runner simulation builds three Stepfiles that share an expensive builder stage thirty
times, pruning to a size between builds: the builder stage never reruns, and the store stays
under the size. Last use is the cache record's mtime; the tests give records fake last uses
(os.utime) instead of sleeping, so the order prune sees is the order of the builds.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stepbuild.progress import human_size
from stepbuild.store.layout import StoreLayout
from stepbuild.store.usage import census
from tests.integration.builds import (
    EPOCH,
    PROJECT,
    Stepbuild,
    assert_clear_error,
    step_lines,
    store_with_base,
    write_context,
)

pytestmark = pytest.mark.root

HOUR = 3600.0
BUILDER = ("FROM base AS builder\n"
           "RUN head -c 1500000 /dev/urandom > /tool && head -c 300000 /dev/urandom > /objs\n")


def app_context(directory: Path, name: str, build: int) -> Path:
    """An app of the shared builder stage; `build` changes its source (a new commit)."""
    stepfile = (BUILDER + "FROM base\nCOPY --from=builder /tool /tool\nCOPY app.txt /app.txt\n"
                f"RUN head -c 200000 /dev/urandom > /payload && cat /app.txt > /out-{name}\n")
    return write_context(directory / name, stepfile, {"app.txt": f"{name} build {build}\n"})


def store_size(sb: Stepbuild) -> int:
    """The store's size on disk, as `stepbuild du` counts it."""
    return census(StoreLayout(sb.root)).total.disk


def records(sb: Stepbuild) -> dict[str, float]:
    """Cache record key → last use."""
    return {p.stem: p.stat().st_mtime for p in (sb.root / "cache").glob("*.json")}


def date_uses(sb: Stepbuild, since: float, when: float) -> None:
    """Give every record used since `since` (real time) the fake last use `when`."""
    for path in (sb.root / "cache").glob("*.json"):
        if path.stat().st_mtime >= since:
            os.utime(path, (when, when))


def age_all(sb: Stepbuild, seconds: float) -> None:
    for path in (sb.root / "cache").glob("*.json"):
        then = path.stat().st_mtime - seconds
        os.utime(path, (then, then))


@pytest.fixture()
def sb(tmp_path: Path) -> Stepbuild:
    return store_with_base(tmp_path, "store", *EPOCH)


def test_runner_simulation_keeps_the_shared_builder_stage_and_the_size(
        sb: Stepbuild, tmp_path: Path) -> None:
    names = ("a", "b", "c")
    start = time.time() - 60 * 24 * HOUR  # the fake clock: build i is used at start + i hours
    limit = 0
    freed = 0
    for build in range(30):
        name = names[build % 3]
        marker = time.time() - 1  # coarse timestamps: every record this build used is newer
        result = sb.build(app_context(tmp_path, name, build), "-t", f"app-{name}", *EPOCH)
        builder_steps = step_lines(result.stderr, "builder")
        assert builder_steps == (["DONE"] if build == 0 else ["CACHED"]), (build, result.stderr)
        date_uses(sb, marker, start + build * HOUR)
        if build == 2:  # one of each: the working set, and room for one more build
            limit = store_size(sb) + 600_000
        if limit:
            before = store_size(sb)
            pruned = sb("prune", "-f", "--keep-storage", str(limit)).stdout
            assert "freed" in pruned
            freed += before - store_size(sb)
            assert store_size(sb) <= limit, (build, pruned)
    total = next(line for line in sb("du").stdout.splitlines() if line.startswith("total"))
    assert total.split()[1] == human_size(store_size(sb))  # du says what the test measured
    assert freed > 20 * 400_000  # prune did work: 27 builds' payloads went
    for last, name in zip((27, 28, 29), names, strict=True):  # each tag: its last build
        assert sb.run(f"app-{name}", "cat", f"/out-{name}") == f"{name} build {last}\n"
    # It was the records that kept the builder stage: without them it runs again.
    sb("prune", "-f", "--all")
    again = sb.build(app_context(tmp_path, "a", 30), "-t", "app-a", *EPOCH)
    assert step_lines(again.stderr, "builder") == ["DONE"]


def test_a_default_prune_keeps_records_used_within_48_hours(sb: Stepbuild,
                                                             tmp_path: Path) -> None:
    sb.build(app_context(tmp_path, "a", 1), "-t", "app", *EPOCH)
    sb.build(app_context(tmp_path, "a", 2), "-t", "app", *EPOCH)  # the first image: untagged
    kept = records(sb)
    age_all(sb, 47 * HOUR)
    assert "0 cache records" in sb("prune", "-f").stdout
    assert set(records(sb)) == set(kept)
    age_all(sb, 2 * HOUR)  # now 49 h unused
    pruned = sb("prune", "-f").stdout
    assert "0 cache records" not in pruned and "0 layers" not in pruned
    rebuilt = sb.build(app_context(tmp_path, "a", 3), "-t", "app", *EPOCH)
    assert step_lines(rebuilt.stderr, "builder") == ["DONE"]
    assert sb("check").stdout == "store is consistent\n"


def test_dry_run_says_what_would_go_and_changes_nothing(sb: Stepbuild, tmp_path: Path) -> None:
    sb.build(app_context(tmp_path, "a", 1), "-t", "app", *EPOCH)
    sb.build(app_context(tmp_path, "a", 2), "-t", "app", *EPOCH)
    age_all(sb, 72 * HOUR)
    listing = {d: sorted(os.listdir(sb.root / d)) for d in ("cache", "layers", "blobs/sha256")}
    out = sb("prune", "--dry-run").stdout.splitlines()
    assert out[0] == ("would remove cache records unused for 2d, and what nothing else keeps"
                      " (tags stay):")
    assert any("last used 3d ago  RUN /bin/sh -c head -c 1500000" in line for line in out)
    assert out[-1].startswith("would remove 3 cache records and free ")  # builder, old app
    assert listing == {d: sorted(os.listdir(sb.root / d)) for d in listing}


def test_prune_without_a_terminal_needs_force(sb: Stepbuild, tmp_path: Path) -> None:
    sb.build(app_context(tmp_path, "a", 1), "-t", "app", *EPOCH)
    sb("rmi", "app")
    before = sorted(os.listdir(sb.root / "layers"))
    result = sb("prune", "--all", check=False)
    assert_clear_error(result, 2, "stdin is not a terminal", "-f (--force)")
    assert sorted(os.listdir(sb.root / "layers")) == before


@pytest.mark.parametrize(("answer", "status", "removed"), [("n\n", 1, False),
                                                             ("y\n", 0, True)])
def test_prune_asks_at_a_terminal(sb: Stepbuild, tmp_path: Path, answer: str, status: int,
                                  removed: bool) -> None:
    sb.build(app_context(tmp_path, "a", 1), "-t", "app", *EPOCH)
    sb("rmi", "app")
    before = sorted(os.listdir(sb.root / "layers"))
    main, terminal = pty.openpty()
    env = {**os.environ, "STEPBUILD_ROOT": str(sb.root), "PYTHONPATH": str(PROJECT)}
    os.write(main, answer.encode())
    result = subprocess.run([sys.executable, "-m", "stepbuild", "prune", "--all"],
                            stdin=terminal, capture_output=True, text=True, env=env,
                            timeout=120, check=False)
    os.close(main)
    os.close(terminal)
    assert result.returncode == status, result.stderr
    assert "WARNING! This will remove every cache record" in result.stderr
    assert (sorted(os.listdir(sb.root / "layers")) != before) == removed


def test_du_shows_kinds_images_shared_and_what_prune_frees(sb: Stepbuild,
                                                            tmp_path: Path) -> None:
    sb.build(app_context(tmp_path, "a", 1), "-t", "app-a", *EPOCH)
    sb.build(app_context(tmp_path, "b", 1), "-t", "app-b", *EPOCH)
    out = sb("du", "-v").stdout
    kinds = [line.split()[0] for line in out.splitlines()[1:8]]
    assert kinds == ["layers", "blobs", "cache", "cache", "parse", "tmp", "other"]
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.startswith(("app-", "base "))}
    assert set(rows) == {"app-a", "app-b", "base"}
    # the base and the builder's /tool layer are in both apps: shared, a MB or more
    assert rows["app-a"][1].endswith("MB") and rows["app-a"][1] == rows["app-b"][1]
    assert out.splitlines()[-1].startswith("prune would free ")
    assert f"{human_size(store_size(sb)):>9}" in next(
        line for line in out.splitlines() if line.startswith("total"))


def test_automatic_gc_prunes_after_a_build_over_the_size(sb: Stepbuild, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[defaults]\ngc-keep-storage = "1kB"\n')
    env = {"STEPBUILD_CONFIG": str(config)}
    sb("build", "-t", "app", *EPOCH, str(app_context(tmp_path, "a", 1)), env=env)
    result = sb("build", "-t", "app", *EPOCH, str(app_context(tmp_path, "a", 2)), env=env)
    notice = [line for line in result.stderr.splitlines() if "gc-keep-storage" in line]
    assert len(notice) == 1 and "over gc-keep-storage 1.0kB: removed" in notice[0]
    assert "removed 0 cache records" not in notice[0]
    # Only the tags' content and their records are left: a prune would free nothing.
    assert sb("du").stdout.splitlines()[-1].startswith("prune would free 0B")
    config.write_text('[defaults]\ngc-keep-storage = "ten gigs"\n')
    bad = sb("build", str(app_context(tmp_path, "a", 3)), env=env, check=False)
    assert_clear_error(bad, 2, "config.toml:2: defaults.gc-keep-storage must be a size")


def test_a_no_op_rebuild_refreshes_the_last_use_of_its_records(sb: Stepbuild,
                                                               tmp_path: Path) -> None:
    context = app_context(tmp_path, "a", 1)
    time.sleep(2.1)  # files younger than the fingerprint's racy window are not recorded
    base_keys = set(records(sb))
    sb.build(context, "-t", "app", *EPOCH)
    build_keys = set(records(sb)) - base_keys
    assert len(build_keys) == 4  # the builder's RUN, COPY --from, COPY, RUN
    age_all(sb, 100 * HOUR)
    aged = records(sb)
    again = sb.build(context, "-v", "-t", "app", *EPOCH)
    assert "nothing changed since the last build" in again.stderr  # the replay path
    now = records(sb)
    assert {k for k in aged if now[k] > aged[k] + 99 * HOUR} == build_keys
