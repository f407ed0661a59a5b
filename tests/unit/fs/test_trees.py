"""trees: remove_tree deletes any depth, never follows symlinks, gets past read-only dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stepbuild.fs.trees import TreeTooDeep, remove_tree, walk_tree


def test_remove_tree_of_any_depth(tmp_path: Path) -> None:
    top = tmp_path / "deep"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    for i in range(1524):  # deeper than shutil.rmtree manages on 3.11
        os.mkdir("d", dir_fd=fd)
        if i % 100 == 0:
            os.symlink("/etc", "link", dir_fd=fd)
            os.close(os.open("f", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
        down = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = down
    os.close(fd)
    remove_tree(top)
    assert not top.exists() and Path("/etc/passwd").exists()
    remove_tree(top)  # gone: nothing to do


def test_remove_tree_of_a_file_or_symlink_removes_just_that(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "kept").write_text("x")
    (tmp_path / "link").symlink_to("dir")
    (tmp_path / "file").write_text("x")
    remove_tree(tmp_path / "link")
    remove_tree(tmp_path / "file")
    assert os.listdir(tmp_path) == ["dir"] and os.listdir(tmp_path / "dir") == ["kept"]


def test_read_only_dirs_are_made_writable_on_the_way(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    top = tmp_path / "top"
    (top / "ro").mkdir(parents=True)
    (top / "ro" / "f").write_text("x")
    (top / "ro").chmod(0o555)
    real_unlink = os.unlink

    def unlink(name: str, *, dir_fd: int) -> None:  # refuses as the kernel would a non-root user
        if os.fstat(dir_fd).st_mode & 0o200 == 0:
            raise PermissionError(13, "Permission denied", name)
        real_unlink(name, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", unlink)
    remove_tree(top)
    assert not top.exists()


def test_best_effort_removes_what_it_can_and_raises_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    top = tmp_path / "top"
    (top / "a").mkdir(parents=True)
    (top / "a" / "stuck").write_text("x")
    (top / "b").write_text("x")
    real_unlink = os.unlink

    def unlink(name: str, *, dir_fd: int | None = None) -> None:
        if name == "stuck":
            raise OSError(5, "I/O error", name)
        real_unlink(name, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(OSError, match="I/O error"):
        remove_tree(top)
    (top / "b").write_text("x")
    remove_tree(top, best_effort=True)
    assert sorted(p.name for p in top.rglob("*")) == ["a", "stuck"]


def test_walk_tree_stops_below_its_limit(tmp_path: Path) -> None:
    (tmp_path / "1" / "2" / "3").mkdir(parents=True)
    walk_tree(os.open(tmp_path, os.O_RDONLY), 3)
    with pytest.raises(TreeTooDeep):
        walk_tree(os.open(tmp_path, os.O_RDONLY), 2)
