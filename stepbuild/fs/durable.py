"""Durable file writes: a temp file on the same filesystem → fsync → rename → fsync(dir).

A crash leaves the old file or the new one, never a torn one (containerd's content store:
ingest to temp, then rename). Used for the store's index.json and records (temp in its tmp/,
via `tmp_dir`), OCI layouts and archives, the team cache dir, the registry auth file, the
build context's stat cache, and (with `durable=False`) the caches that only cost speed if a
crash loses them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from stepbuild.fs.owner import owner_tag

__all__ = ["fsync_dir", "replacing", "replacing_path", "write_file"]

# What tempfile.mkstemp does, without importing tempfile (~4 ms, on the no-op path): O_EXCL
# never reuses a name, and never writes through a symlink planted under it.
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def fsync_dir(path: Path) -> None:
    """fsync a directory so the renames into it survive a power loss (rename(2) alone only
    orders them)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(dest: Path, mode: int | None, *, tmp_dir: Path | None = None,
              sync_dir: bool = True, durable: bool = True) -> Iterator[BinaryIO]:
    """A temp file (in `tmp_dir`, default `dest`'s dir) open for writing; when the block ends
    it is fsynced, given `mode` and renamed over `dest` (then `dest`'s dir is fsynced unless
    `sync_dir` is False: a caller writing many files fsyncs once). Removed if the block raises.

    `mode` None: 0o666 less the umask, as `open()` makes files. `durable=False` fsyncs
    nothing: still atomic (readers see the old file or the new one), but a power loss may
    leave either, or an empty file; for caches that a lost write only makes slower.
    """
    fd, tmp = _create_temp(tmp_dir or dest.parent, dest, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            _seal(f.fileno(), mode, durable)
        os.rename(tmp, dest)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable and sync_dir:
        fsync_dir(dest.parent)


@contextmanager
def replacing_path(dest: Path, mode: int | None) -> Iterator[Path]:
    """`replacing` for a writer that needs a path rather than a file: the temp file (empty,
    beside `dest`) may be opened, rewritten or even removed and made again by the block, as
    long as there is a file under that name when it ends."""
    fd, tmp = _create_temp(dest.parent, dest, mode)
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _seal(fd, mode, durable=True)
        finally:
            os.close(fd)
        os.rename(tmp, dest)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(dest.parent)


def write_file(dest: Path, data: bytes, mode: int | None, *, tmp_dir: Path | None = None,
               durable: bool = True) -> None:
    """`data` as `dest`, atomically and (unless `durable=False`) durably; see `replacing`."""
    with replacing(dest, mode, tmp_dir=tmp_dir, durable=durable) as f:
        f.write(data)


def _create_temp(directory: Path, dest: Path, mode: int | None) -> tuple[int, Path]:
    """A new empty file in `directory` named after `dest`: 0600 until `_seal` gives it
    `mode`, or 0o666 less the umask when `mode` is None."""
    owner = owner_tag()  # whose it is, should we be killed before we remove it
    while True:
        path = directory / f".{dest.name}.{owner}-{os.urandom(6).hex()}.tmp"
        try:
            return os.open(path, _TEMP_FLAGS, 0o666 if mode is None else 0o600), path
        except FileExistsError:
            continue  # a name taken (48 random bits): draw another, as mkstemp does


def _seal(fd: int, mode: int | None, durable: bool) -> None:
    if mode is not None:
        os.fchmod(fd, mode)
    if durable:
        os.fsync(fd)
