"""durable: temp → fsync → rename writes leave the old file or the new one, and no temp."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from stepbuild.fs.durable import fsync_dir, replacing, write_file


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
