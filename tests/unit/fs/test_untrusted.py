"""untrusted: files of a directory someone else writes to are read only when regular, capped.

docs/security.md family D (a FIFO, a device, a symlink where a file should be) and E (a file
far larger than it should be). A FIFO must fail at once: every read is run in a thread with a
timeout, so a regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepbuild.fs.untrusted import UntrustedFileError, copy_regular, open_regular, read_regular
from tests.fifos import promptly, release


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    yield path
    # If a regression left a reader blocked in open(2), opening the FIFO for writing lets it
    # go on; with no reader this open fails with ENXIO, and there is nothing to do.
    release(path)


def test_a_regular_file_gives_its_bytes(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"hello")
    assert read_regular(tmp_path / "f", 5) == b"hello"
    assert read_regular(tmp_path / "f", 100) == b"hello"
    with open_regular(tmp_path / "f", 5) as f:
        assert f.read() == b"hello"


def test_a_fifo_is_refused_without_blocking(fifo: Path, tmp_path: Path) -> None:
    with pytest.raises(UntrustedFileError, match="not a regular file"):
        promptly(lambda: read_regular(fifo, 1 << 20))
    with pytest.raises(UntrustedFileError, match="not a regular file"):
        promptly(lambda: copy_regular(fifo, tmp_path / "copy", 1 << 20))
    assert not (tmp_path / "copy").exists()


def test_a_symlink_is_refused_even_to_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"secret")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(UntrustedFileError, match="symbolic link"):
        read_regular(tmp_path / "link", 100)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UntrustedFileError, match="symbolic link"):
        read_regular(tmp_path / "dangling", 100)


def test_a_file_over_the_cap_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 101)
    with pytest.raises(UntrustedFileError, match="larger than 100 bytes"):
        read_regular(tmp_path / "big", 100)
    with pytest.raises(UntrustedFileError, match="larger than 100 bytes"):
        copy_regular(tmp_path / "big", tmp_path / "copy", 100)
    assert read_regular(tmp_path / "big", 101) == b"x" * 101


def test_other_kinds_and_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(UntrustedFileError, match="not a regular file"):
        read_regular(tmp_path / "dir", 100)
    with pytest.raises(UntrustedFileError, match="not a regular file"):
        promptly(lambda: read_regular(Path("/dev/zero"), 100))  # would never end
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        with pytest.raises(OSError):  # a socket cannot be open(2)ed at all: ENXIO
            read_regular(tmp_path / "sock", 100)
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "missing", 100)


def test_copy_copies_a_regular_file(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # more than one chunk
    (tmp_path / "blob").write_bytes(data)
    copy_regular(tmp_path / "blob", tmp_path / "copy", len(data))
    assert (tmp_path / "copy").read_bytes() == data


def test_no_descriptor_is_left_open_on_a_refusal(fifo: Path, tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 10)
    before = len(os.listdir("/proc/self/fd"))
    for path in (fifo, tmp_path / "big"):
        with pytest.raises(UntrustedFileError):
            promptly(lambda: read_regular(path, 5))  # noqa: B023 (called at once)
    assert len(os.listdir("/proc/self/fd")) == before
