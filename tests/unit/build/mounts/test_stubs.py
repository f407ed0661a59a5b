"""Mount-point stubs: made inside the root (image symlinks resolved there), removed after
the step unless the step used or moved them, the parent's mtime restored."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stepbuild.build.mounts.stubs import Stubs
from stepbuild.errors import StepbuildError


def stubs_of(root: Path) -> Stubs:
    return Stubs(os.open(root, os.O_RDONLY | os.O_DIRECTORY))


def test_stubs_are_removed_and_the_parent_mtime_restored(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var").mkdir(parents=True)
    os.utime(root / "var", ns=(1_000_000_000, 2_000_000_000))
    stubs = stubs_of(root)
    stubs.make("/var/cache/apt", "dir")
    stubs.make("/var/cache/apt", "dir")  # already there now: nothing new
    stubs.make("/run/secrets/tok", "file")
    assert (root / "var" / "cache" / "apt").is_dir() and (root / "run/secrets/tok").is_file()
    stubs.remove()
    assert sorted(os.listdir(root)) == ["var"] and os.listdir(root / "var") == []
    assert (root / "var").stat().st_mtime_ns == 2_000_000_000


def test_stubs_follow_image_symlinks_inside_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (root / "link").symlink_to("/real")  # absolute: must resolve inside the root
    (root / "escape").symlink_to(str(outside))
    stubs = stubs_of(root)
    stubs.make("/link/x", "dir")
    stubs.make("/escape/y", "file")
    assert (root / "real" / "x").is_dir() and not (outside / "y").exists()
    assert (root / str(outside).lstrip("/") / "y").is_file()
    stubs.remove()
    assert os.listdir(root / "real") == [] and not (root / "tmp").exists()


def test_stubs_the_step_used_or_moved_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    stubs = stubs_of(root)
    stubs.make("/a/b", "dir")
    stubs.make("/c/d", "file")
    (root / "a" / "written").write_text("by the step")
    (root / "c" / "d").write_text("not empty")
    os.rename(root / "a", root / "moved")
    (root / "a").mkdir()  # the step made its own /a: not ours, kept
    stubs.remove()
    assert sorted(os.listdir(root)) == ["a", "c", "moved"]
    assert sorted(os.listdir(root / "moved")) == ["written"]  # our empty b is gone
    assert (root / "c" / "d").read_text() == "not empty"


def test_dangling_symlinks_are_followed_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("../run")  # as in Debian, but /run is missing
    (root / "loop").symlink_to("loop")
    stubs = stubs_of(root)
    stubs.make("/var/run/secrets/tok", "file")
    assert (root / "run" / "secrets" / "tok").is_file()
    with pytest.raises(StepbuildError):
        stubs.make("/loop/x", "dir")
    stubs.remove()
    assert sorted(os.listdir(root)) == ["loop", "var"]
