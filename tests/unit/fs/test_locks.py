"""locks: flocked holds shared or exclusive flocks, waits or not, on files and directories."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from stepbuild.fs.locks import flocked


def test_shared_holders_coexist_and_exclude_an_exclusive_one(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    with flocked(lock, exclusive=False) as first, flocked(lock, exclusive=False) as second:
        assert first and second
        open_fds = len(os.listdir("/proc/self/fd"))
        with flocked(lock, exclusive=True, wait=False) as held:
            assert held is False
            assert len(os.listdir("/proc/self/fd")) == open_fds  # nothing held, nothing open
    with flocked(lock, exclusive=True, wait=False) as held:
        assert held is True  # released when the blocks ended
        with flocked(lock, exclusive=False, wait=False) as shared:
            assert shared is False
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


def test_the_lock_file_gets_the_mode_asked_for_and_is_never_a_symlink(tmp_path: Path) -> None:
    with flocked(tmp_path / "lock", exclusive=True, mode=0o644):
        pass
    assert stat.S_IMODE((tmp_path / "lock").stat().st_mode) == 0o644 & ~_umask()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError), flocked(tmp_path / "link", exclusive=True):
        pass
    assert not (tmp_path / "elsewhere").exists()


def test_a_directory_is_locked_itself(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    layout.mkdir()
    (tmp_path / "alias").symlink_to(layout)
    with flocked(layout, exclusive=True, directory=True) as held:
        assert held
        with flocked(tmp_path / "alias", exclusive=True, wait=False, directory=True) as other:
            assert other is False
    assert os.listdir(layout) == []


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
