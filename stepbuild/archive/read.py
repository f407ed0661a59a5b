"""Where imported images are read from: a tar archive in a private copy, or an OCI layout dir.

`load.py` decides what an archive means (OCI layout or docker save, which image, which
layers); this module only reads named files out of one, with limits, and verifies blobs:

- `private_copy`: a stream (stdin, a user's file) copied into the store's tmp/, decompressed
  on the way when gzip or zstd, so what is verified later is what is used later.
- `ArchiveSource`: that copy indexed once (member name → offset and size; links between
  members followed lexically, never on disk), members read with pread(2).
- `LayoutSource`: an OCI layout dir; each file opened inside it (rootpath); a blob is copied
  into tmp/ while it is hashed, whatever happens to the dir meanwhile.
- `verified_blob`: size first, then sha256, before the caller decompresses anything
  (docs/security.md rule 4); `layers/decompress.py` then decompresses it.

No store logic beyond asking for temp files; no tar *extraction* (see layers/apply.py).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from stepbuild.errors import DigestMismatch, InvalidDocument, LayerError, StepbuildError
from stepbuild.layers.decompress import GZIP_MAGIC, ZSTD_MAGIC, Prefixed, read_up_to
from stepbuild.layers.tar import Readable
from stepbuild.oci import documents as oci
from stepbuild.oci.digest import PREFIX, sha256_stream

if TYPE_CHECKING:
    from stepbuild.store.store import Store

__all__ = [
    "MAX_ARCHIVE_ENTRIES",
    "ArchiveSource",
    "LayoutSource",
    "Opener",
    "Source",
    "private_copy",
]

_CHUNK = 1 << 20
MAX_ARCHIVE_ENTRIES = 100_000
_MAX_LINKS = 40
Opener = Callable[[], Readable]


class Source:
    """Named files of an OCI layout or a docker archive, read with limits."""

    label: str

    def has(self, name: str) -> bool:
        return self.size(name) is not None

    def size(self, name: str) -> int | None:
        raise NotImplementedError

    def read(self, name: str, limit: int) -> bytes:
        raise NotImplementedError

    @contextmanager
    def verified_blob(self, store: Store, name: str, desc: oci.Descriptor | None
                      ) -> Iterator[Opener]:
        """Check the size and digest of blob `name` (when `desc` gives them); yield a
        function opening the verified bytes (once)."""
        raise NotImplementedError
        yield  # pragma: no cover

    def _missing(self, name: str) -> InvalidDocument:
        return InvalidDocument(f"{self.label}: {name}", "missing")


def _check_size(desc: oci.Descriptor | None, size: int | None) -> None:
    if desc is not None and size != desc.size:
        raise DigestMismatch(desc.digest, None, expected_size=desc.size, actual_size=size)


class Section:
    """A read-only window [offset, offset + size) of an open file, read with pread(2)."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self._fd = fd
        self._offset = offset
        self._left = size

    def read(self, n: int = -1, /) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        if n <= 0:
            return b""
        data = os.pread(self._fd, n, self._offset)
        if not data:
            raise LayerError("archive ends early")  # it is our own copy: cannot happen
        self._offset += len(data)
        self._left -= len(data)
        return data


class ArchiveSource(Source):
    """A tar of an OCI layout or a docker save, indexed once: member name → (offset, size).

    Names are made relative and lexically clean (`./x`, `/x`, `a/../x` are all `x`); symlinks
    and hard links between members (old `docker save` links repeated layers) are followed
    lexically inside the archive, never on disk. Only regular files are members; the last
    of duplicate names wins, as when the tar is extracted.
    """

    def __init__(self, path: Path, label: str) -> None:
        from stepbuild.layers.tar import LNKTYPE, REGTYPE, SYMTYPE, TarReader
        from stepbuild.layers.unpack import clean_name

        self.label = label
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        members: dict[str, tuple[int, int]] = {}
        links: dict[str, str] = {}
        try:
            with open(self._fd, "rb", closefd=False) as f:
                for count, h in enumerate(TarReader(f)):
                    if count >= MAX_ARCHIVE_ENTRIES:
                        raise InvalidDocument(label, f"more than {MAX_ARCHIVE_ENTRIES} entries")
                    name = clean_name(os.fsdecode(h.name))
                    target = os.fsdecode(h.linkname)
                    members.pop(name, None)
                    links.pop(name, None)
                    if h.type == REGTYPE:
                        members[name] = (f.tell(), h.size)
                    elif h.type == SYMTYPE:
                        links[name] = clean_name(posixpath.join(posixpath.dirname(name), target))
                    elif h.type == LNKTYPE:
                        links[name] = clean_name(target)
        except LayerError as exc:
            os.close(self._fd)
            problem = exc.message if members or links else "not a tar archive"
            raise InvalidDocument(label, problem) from None
        except BaseException:
            os.close(self._fd)
            raise
        for name in links:
            resolved = _follow(name, links)
            if resolved in members:
                members[name] = members[resolved]
        self._members = members

    def close(self) -> None:
        os.close(self._fd)

    def _find(self, name: str) -> tuple[int, int] | None:
        from stepbuild.layers.unpack import clean_name

        return self._members.get(clean_name(name))

    def size(self, name: str) -> int | None:
        found = self._find(name)
        return None if found is None else found[1]

    def read(self, name: str, limit: int) -> bytes:
        found = self._find(name)
        if found is None:
            raise self._missing(name)
        if found[1] > limit:
            raise InvalidDocument(f"{self.label}: {name}",
                                  f"{found[1]} bytes, more than the {limit} it may have")
        return Section(self._fd, *found).read()

    @contextmanager
    def verified_blob(self, store: Store, name: str, desc: oci.Descriptor | None
                      ) -> Iterator[Opener]:
        found = self._find(name)
        if found is None:
            raise self._missing(name)
        _check_size(desc, found[1])
        if desc is not None:
            actual = sha256_stream(Section(self._fd, *found))[0]
            if actual != desc.digest:
                raise DigestMismatch(desc.digest, actual, actual_size=found[1])
        yield lambda: Section(self._fd, *found)


def _follow(name: str, links: dict[str, str]) -> str:
    for _ in range(_MAX_LINKS):
        if name not in links:
            return name
        name = links[name]
    return name


class LayoutSource(Source):
    """An OCI layout dir. Every file is opened inside it (rootpath: symlinks in it followed
    within it); layer blobs are copied into tmp/ while they are hashed, so the bytes
    verified are the bytes used, whatever happens to the dir meanwhile."""

    def __init__(self, path: Path, label: str) -> None:
        self.label = label
        self._fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self._fd)

    def _open(self, name: str) -> int | None:
        from stepbuild.fs.rootpath import open_in_root

        try:
            fd = open_in_root(self._fd, name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InvalidDocument(f"{self.label}: {name}", "not a regular file")
        return fd

    def size(self, name: str) -> int | None:
        fd = self._open(name)
        if fd is None:
            return None
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def read(self, name: str, limit: int) -> bytes:
        fd = self._open(name)
        if fd is None:
            raise self._missing(name)
        with open(fd, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise InvalidDocument(f"{self.label}: {name}", f"more than {limit} bytes")
        return data

    @contextmanager
    def verified_blob(self, store: Store, name: str, desc: oci.Descriptor | None
                      ) -> Iterator[Opener]:
        fd = self._open(name)
        if fd is None:
            raise self._missing(name)
        copy = store.tmp_file("import-blob-")
        try:
            with open(fd, "rb") as src:
                _check_size(desc, os.fstat(src.fileno()).st_size)
                sha, size = hashlib.sha256(), 0
                with open(copy, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        sha.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            actual = PREFIX + sha.hexdigest()
            if desc is not None and (size, actual) != (desc.size, desc.digest):
                raise DigestMismatch(desc.digest, actual, actual_size=size)
            with open(copy, "rb") as verified:
                yield lambda: verified
        finally:
            with suppress(FileNotFoundError):
                copy.unlink()


@contextmanager
def private_copy(store: Store, stream: BinaryIO) -> Iterator[Path]:
    """`stream`'s bytes (decompressed when gzip or zstd) in a new file under tmp/, removed
    on exit. Raises StepbuildError when the disk fills up (a decompression bomb)."""
    from stepbuild.layers.unpack import decompressor

    copy = store.tmp_file("load-")
    try:
        head = read_up_to(stream, 4)
        source: Readable = Prefixed(head, stream)
        if head.startswith(GZIP_MAGIC) or head == ZSTD_MAGIC:
            source = decompressor(source, "gzip" if head.startswith(GZIP_MAGIC)  # type: ignore[arg-type]
                                  else "zstd")
        try:
            with open(copy, "wb") as out:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
        except OSError as exc:
            raise StepbuildError(f"cannot copy the archive into {copy.parent}: "
                                 f"{exc.strerror or exc}") from exc
        yield copy
    finally:
        with suppress(FileNotFoundError):
            copy.unlink()
