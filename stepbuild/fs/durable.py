"""Durable file writes: a temp file on the same filesystem → fsync → rename → fsync(dir).

A crash leaves the old file or the new one, never a torn one (containerd's content store:
ingest to temp, then rename). The store keeps its own temp dir and lock (store/store.py); this is
for the files written elsewhere: OCI layouts, the team cache dir, the registry auth file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

__all__ = ["fsync_dir", "replacing", "write_file"]


def fsync_dir(path: Path) -> None:
    """fsync a directory so the renames into it survive a power loss (rename(2) alone only
    orders them)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(dest: Path, mode: int, *, tmp_dir: Path | None = None,
              sync_dir: bool = True) -> Iterator[BinaryIO]:
    """A temp file (in `tmp_dir`, default `dest`'s dir) open for writing; when the block ends
    it is fsynced, given `mode` and renamed over `dest` (then `dest`'s dir is fsynced unless
    `sync_dir` is False: a caller writing many files fsyncs once). Removed if the block raises."""
    import tempfile  # not at the top: sources/context.py needs only fsync_dir, on the no-op path

    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=tmp_dir or dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.rename(name, dest)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(name)
        raise
    if sync_dir:
        fsync_dir(dest.parent)


def write_file(dest: Path, data: bytes, mode: int, *, tmp_dir: Path | None = None) -> None:
    """`data` as `dest`, durably and atomically (see `replacing`)."""
    with replacing(dest, mode, tmp_dir=tmp_dir) as f:
        f.write(data)
