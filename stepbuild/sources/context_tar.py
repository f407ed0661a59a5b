"""A build context that arrives as one file: a tar (plain, gzip, bzip2, xz, zstd), or a Stepfile.

`docker build - < ctx.tar` and `docker build https://host/ctx.tar.gz` send the context as a
tar; `docker build - < Dockerfile` sends a Dockerfile and no context at all. `sniff` tells them
apart as docker does (moby's `DetectArchiveReader`): compression by magic bytes (never by a
file name), then a valid tar header; anything else is the Stepfile's text. A compressed file
that holds no tar is an error, not a Stepfile.

`extract` unpacks the tar into a fresh directory with the project's own tar reader and entry
writer (`layers/tar.py`, `layers/unpack.Unpacker`: docs/security.md rules 1-3), stricter than
ADD, because this is a context and nothing in it has a reason to be odd. Refused, naming the
entry (ContextError):

- a name that is absolute or holds a `..` component (ADD would contain it; a context tar that
  has one was not made from a directory, and docker refuses it too);
- an entry whose path goes through a symlink (the archive's own or any): every entry is
  written at its own place, never through a link;
- a hard link whose target is absolute or has a `..`, or is anything but an earlier entry
  of the same archive (`Unpacker`'s rule);
- devices and fifos (a context can hold neither: `sources/context.py` refuses them).

Symlinks are kept as they are, whatever their target: like a directory context's, they are
data, and `sources/context.py` refuses to follow one out of the context when COPY names it.
Owners are reset to 0:0 and xattrs dropped: neither reaches an image from a context (COPY
writes 0:0, and context keys leave owners out), and a rootless builder could not set them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from stepbuild.errors import ContextError, LayerError
from stepbuild.layers.decompress import read_up_to
from stepbuild.layers.tar import (
    BLKTYPE,
    BLOCK,
    CHRTYPE,
    FIFOTYPE,
    LNKTYPE,
    Header,
    TarReader,
)
from stepbuild.layers.unpack import compression, open_archive

if TYPE_CHECKING:
    from stepbuild.fs.rootpath import NonDirRule

__all__ = ["compression", "extract", "sniff"]

# (magic, name), as layers/unpack.py tells archives apart: gzip RFC 1952, bzip2 "BZh", xz,
# zstd RFC 8878 frame magic.


def sniff(path: Path, label: str) -> str:
    """"tar" if the file `path` is a tar archive (maybe compressed), "text" otherwise (a
    Stepfile). ContextError for an empty file, or compressed data that is no tar."""
    with open(path, "rb") as raw:
        head = raw.read(6)
    if not head:
        raise ContextError(f"{label} is empty: expected a tar archive or a Stepfile")
    kind = compression(head)
    try:
        with open_archive(path) as stream:
            block = read_up_to(stream, BLOCK)
    except LayerError as exc:  # corrupt compressed data
        raise ContextError(f"{label}: {exc.message}") from None
    is_tar = len(block) == BLOCK and TarReader(io.BytesIO(block)).first_is_header()
    if kind is not None and not is_tar:
        raise ContextError(f"{label} is {kind} data but not a tar archive",
                           hint="send a tar (or a compressed tar) of the context directory")
    return "tar" if is_tar else "text"


def extract(path: Path, target: Path, label: str) -> None:
    """Unpack the tar (maybe compressed) `path` into the existing empty directory `target`,
    under the rules of the module docstring. ContextError naming the entry for what is
    refused or corrupt; what was written before it stays (the caller removes `target`)."""
    from stepbuild.layers.unpack import Unpacker

    class ContextUnpacker(Unpacker):
        """ADD's entry writer, but no entry is written through a symlink."""

        def _path_rule(self, name: str) -> NonDirRule | None:
            def refuse(parent: int, base: str, link: str | None) -> bool:
                what = f"the symlink {base!r}" if link is not None else f"the file {base!r}"
                raise ContextError(f"{label}: entry {name!r}: its path goes through {what}")
            return refuse

    root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with open_archive(path) as stream:
            reader = _Checked(TarReader(stream), label)
            ContextUnpacker(root_fd, "", 0, 0, label).run(reader)  # type: ignore[arg-type]
    except LayerError as exc:
        raise ContextError(exc.message if exc.message.startswith(label) else
                           f"{label}: {exc.message}") from None
    finally:
        os.close(root_fd)


class _Checked:
    """The reader's entries, each checked against the context rules before it is written."""

    def __init__(self, reader: TarReader, label: str) -> None:
        self._reader = reader
        self._label = label

    def read(self, n: int) -> bytes:
        return self._reader.read(n)

    def __iter__(self) -> Iterator[Header]:
        for header in self._reader:
            yield replace(self._check(header), xattrs=())

    def _check(self, header: Header) -> Header:
        name = os.fsdecode(header.name)
        if name.startswith("/"):
            raise self._refuse(name, "an absolute name")
        if _escapes(name):
            raise self._refuse(name, "a '..' in its name")
        if header.type == LNKTYPE and _escapes(os.fsdecode(header.linkname)):
            raise self._refuse(name, "a hard link leading out of the archive")
        if header.type in (CHRTYPE, BLKTYPE, FIFOTYPE):
            raise self._refuse(name, "a device or fifo")
        return header

    def _refuse(self, name: str, what: str) -> ContextError:
        return ContextError(f"{self._label}: entry {name!r} has {what}, which a build context"
                            " cannot hold", hint="make the tar from inside the context"
                                                 " directory: tar -C DIR -c .")


def _escapes(name: str) -> bool:
    """An absolute name, or one with a `..` component."""
    return name.startswith("/") or ".." in name.split("/")
