"""durable: temp → fsync → rename writes leave the old file or the new one, and no temp."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from stepbuild.fs.durable import fsync_dir, replacing, replacing_path, write_file


def test_write_file_replaces_with_the_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "config.json"
    dest.write_text("old")
    write_file(dest, b"new", 0o600)
    assert dest.read_bytes() == b"new"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["config.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    dest = tmp_path / "index.json"
    dest.write_text("old")
    with pytest.raises(RuntimeError), replacing(dest, 0o644) as f:
        f.write(b"half")
        raise RuntimeError("disk full")
    assert dest.read_text() == "old"
    assert os.listdir(tmp_path) == ["index.json"]


def test_the_temp_file_can_live_in_another_dir_of_the_filesystem(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "blobs").mkdir()
    dest = tmp_path / "blobs" / "abc"
    with replacing(dest, 0o644, tmp_dir=tmp_path / "tmp", sync_dir=False) as f:
        f.write(b"data")
        assert len(os.listdir(tmp_path / "tmp")) == 1 and os.listdir(tmp_path / "blobs") == []
    assert dest.read_bytes() == b"data" and os.listdir(tmp_path / "tmp") == []
    fsync_dir(tmp_path / "blobs")  # a directory fsyncs; a file is refused
    with pytest.raises(NotADirectoryError):
        fsync_dir(dest)


def test_mode_none_is_what_open_makes_and_durable_false_still_replaces(tmp_path: Path) -> None:
    dest = tmp_path / "cache.bin"
    dest.write_text("old")
    mask = os.umask(0o027)
    try:
        write_file(dest, b"new", None, durable=False)
    finally:
        os.umask(mask)
    assert dest.read_bytes() == b"new"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["cache.bin"]


def test_replacing_path_lets_the_writer_remake_the_temp_file(tmp_path: Path) -> None:
    dest = tmp_path / "out.tar"
    with replacing_path(dest, 0o644) as tmp:
        assert tmp.parent == tmp_path and tmp.read_bytes() == b""
        tmp.unlink()  # as capture does when there is nothing to write
        tmp.write_bytes(b"end")
    assert dest.read_bytes() == b"end" and stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["out.tar"]
    with pytest.raises(FileNotFoundError), replacing_path(dest, 0o644) as tmp:
        tmp.unlink()  # no file at the end: dest is left alone
    assert dest.read_bytes() == b"end" and os.listdir(tmp_path) == ["out.tar"]
