"""Reading files someone else controls: regular files only, never more than we asked for.

A directory another user can write to (a team cache shared by a team) may hold anything
under the name of a file: a FIFO, whose plain open(2) for reading waits forever for a writer;
a device; a symlink to somewhere else; a file far larger than what it should be. Each file is
opened with O_NONBLOCK (a FIFO open returns at once), O_NOFOLLOW (the last component is never
a symlink) and O_NOCTTY, then `fstat`ed on that descriptor: what is read is the checked file,
whatever is renamed over its name meanwhile. O_NONBLOCK changes nothing for a regular file,
so it is left set.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from io import BufferedReader
    from pathlib import Path

__all__ = ["UntrustedFileError", "copy_regular", "open_regular", "read_regular"]

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
_CHUNK = 1 << 20


class UntrustedFileError(ValueError):
    """The file is not a regular file, or is larger than allowed (the message says which)."""


def open_regular(path: Path, max_size: int) -> BufferedReader:
    """`path` open for reading, checked to be a regular file of at most `max_size` bytes.

    Raises FileNotFoundError (and other OSErrors) as open(2) does, UntrustedFileError for a
    symlink, a FIFO, a device, a socket, a directory or a file over `max_size`.
    """
    try:
        fd = os.open(path, _FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise UntrustedFileError(f"{path} is a symbolic link") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedFileError(f"{path} is not a regular file")
        if info.st_size > max_size:
            raise UntrustedFileError(f"{path} is larger than {max_size} bytes")
    except BaseException:
        os.close(fd)
        raise
    return open(fd, "rb")  # noqa: SIM115 (the caller closes it)


def read_regular(path: Path, max_size: int) -> bytes:
    """The bytes of the regular file `path`, at most `max_size` of them (see `open_regular`)."""
    with open_regular(path, max_size) as f:
        data = f.read(max_size + 1)  # +1: a file that grew since fstat is still refused
    if len(data) > max_size:
        raise UntrustedFileError(f"{path} is larger than {max_size} bytes")
    return data


def copy_regular(path: Path, dest: Path, max_size: int) -> None:
    """Copy the regular file `path` (see `open_regular`) to `dest`, stopping past `max_size`
    bytes, so a file that keeps growing while it is copied cannot fill the disk."""
    with open_regular(path, max_size) as src, open(dest, "wb") as out:
        left = max_size + 1
        while left > 0 and (chunk := src.read(min(_CHUNK, left))):
            out.write(chunk)
            left -= len(chunk)
    if left == 0:
        raise UntrustedFileError(f"{path} is larger than {max_size} bytes")
