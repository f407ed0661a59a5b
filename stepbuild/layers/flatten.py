"""An image's layers → its root filesystem as one plain directory (for `type=local`/`type=tar`).

`flatten(store, diff_ids, root)` applies the layer tars from the store, base first, into an
empty directory, with the OCI changeset semantics (image-spec layer.md, "Applying
Changesets" and "Whiteouts"): a `.wh.<name>` entry deletes `<name>` from the layers below, a
`.wh..wh..opq` entry deletes every entry of its directory that the layers below put there,
and every other entry is written over what is there. The result is the tree a container
of the image sees (what the overlay of the layer dirs shows at `stepbuild run`), minus
overlay's own whiteout devices and xattrs.

How (and why this way):
- Two passes over each layer tar. Pass one collects the layer's whiteouts and applies them,
  shallowest first; pass two writes every other entry. Whiteouts only ever hide what
  *lower* layers made, so applying them all first is exactly right whatever order a foreign
  layer lists them in (the spec only says they SHOULD come before their siblings); `apply`
  refuses a whiteout whose path goes through a symlink of its own layer, the one case
  where the order would matter.
- Entries are written by `unpack`'s unpacker, the one used for ADD: every name is resolved
  inside the root with fd-relative calls (`rootpath`), symlinks are written as they are and
  followed only within the root, hard links only to files of the same layer, numeric ids,
  no overlay xattrs (docs/security.md rules 1-3).
- As a layer (`Unpacker(as_layer=True)`): a symlink or other non-directory of the layers
  below on an entry's path (or a whiteout's) is replaced by a directory, not followed, and
  a whiteout's missing directories are made: `apply` puts each layer in a dir of its own,
  where that path is a real directory, and overlay shows it in place of the lower link. So
  this tree is the overlay's (docs/architecture.md, "One tree in every view"), which
  `tests/integration/test_layer_paths.py` checks against a real mount.
- Pass two hashes the tar as it is read; a blob whose sha256 is not its diff_id raises
  `DigestMismatch` (docs/security.md rule 4) and the caller discards the half-made tree.
- Directory mtimes end deterministic: each directory gets the mtime of the last layer entry
  that named it, and a directory no entry named (made implicitly as a parent) gets 0. So
  deletions and additions inside a directory by later layers, which change its mtime on
  disk, leave no trace, and the same image always gives the same tree (and `type=tar`
  the same bytes). The root directory itself is 0755, root-owned, mtime 0.

Needs root for what the layers need root for: device nodes, other owners, some xattrs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from stepbuild.errors import DigestMismatch, LayerError
from stepbuild.fs.rootpath import makedirs_in_root
from stepbuild.fs.trees import move_dir_fd, sorted_subdirs
from stepbuild.layers.tar import DIRTYPE, Header, TarReader
from stepbuild.layers.unpack import (  # the ADD unpacker: the same safe entry writer and name rule
    Unpacker,
    clean_name,
    remove_entry,
)
from stepbuild.oci.digest import PREFIX

__all__ = ["flatten"]

_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_META_PREFIX = ".wh..wh."  # AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): never content
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class LayerBlobs(Protocol):
    """Where the store keeps a layer's tar (`store.Store` is one)."""

    def blob_path(self, digest: str) -> Path: ...


def flatten(store: LayerBlobs, diff_ids: Sequence[str], root: Path) -> None:
    """Apply the layers `diff_ids` (base first) from `store` into the empty directory `root`.

    Raises `LayerError` naming the layer and the entry for what cannot be applied (see
    `unpack.unpack_archive`; also whiteouts of `.`, `..` or an empty name, and entries whose
    path goes through a `.wh.` name), `DigestMismatch`
    for a layer blob that is not what its name says, `BlobNotFound` for a missing one.
    On error `root` holds a partial tree: the caller made it somewhere temporary and
    deletes it.
    """
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        if os.geteuid() == 0:
            os.fchown(root_fd, 0, 0)
        os.fchmod(root_fd, 0o755)
        dir_times: dict[str, int] = {}
        for diff_id in diff_ids:
            _apply_layer(store, diff_id, root_fd, dir_times)
        _fix_dir_times(root_fd, dir_times)
    finally:
        os.close(root_fd)


def _apply_layer(store: LayerBlobs, diff_id: str, root_fd: int, dir_times: dict[str, int]) -> None:
    path = store.blob_path(diff_id)
    label = f"layer {diff_id}"
    with open(path, "rb") as f:
        whiteouts = [h.name for h in TarReader(f) if _is_whiteout(h.name)]
    # Shallowest first: a whiteout of `a` deletes the lower `a` before `a/.wh.b` makes this
    # layer's directory `a`, whichever comes first in the tar (in the layer dir `apply` makes,
    # that directory stays, made opaque by the whiteout of `a`).
    whiteouts.sort(key=lambda name: clean_name(os.fsdecode(name)).count("/"))
    for name in whiteouts:
        _apply_whiteout(root_fd, name, label, dir_times)
    with open(path, "rb") as f:
        hashing = _HashingReader(f)
        entries = _Entries(TarReader(hashing), dir_times, label)
        Unpacker(root_fd, "", None, None, label, as_layer=True).run(cast(TarReader, entries))
        hashing.drain()
    if hashing.digest != diff_id:
        raise DigestMismatch(diff_id, hashing.digest, actual_size=hashing.size)


def _base(name: bytes) -> str:
    return os.fsdecode(name).rstrip("/").rpartition("/")[2]


def _is_whiteout(name: bytes) -> bool:
    return _base(name).startswith(_WHITEOUT)


class _Entries:
    """A layer's entries without its whiteouts, as the unpacker reads them (`for h in ...`,
    `read(n)`); remembers the mtime each directory entry gives."""

    def __init__(self, reader: TarReader, dir_times: dict[str, int], label: str) -> None:
        self._reader = reader
        self._dir_times = dir_times
        self._label = label

    def __iter__(self) -> Iterator[Header]:
        for header in self._reader:
            if _is_whiteout(header.name):
                continue
            name = os.fsdecode(header.name)
            head = name.rstrip("/").rpartition("/")[0]
            if f"/{head}".find(f"/{_WHITEOUT}") >= 0:  # no loop over a deep name's parts
                # inside a "whiteout": a tree could not hold it (the name means a whiteout)
                raise LayerError(f"{self._label}: entry {name!r}: a path through a whiteout")
            if header.type == DIRTYPE:
                self._dir_times[clean_name(os.fsdecode(header.name))] = header.mtime_ns
            yield header

    def read(self, n: int) -> bytes:
        return self._reader.read(n)


class _HashingReader:
    """Reads a file, hashing every byte read; `drain()` reads (and hashes) what is left."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1, /) -> bytes:
        data: bytes = self._file.read(n)
        self._sha.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return PREFIX + self._sha.hexdigest()


def _apply_whiteout(root_fd: int, raw: bytes, label: str, dir_times: dict[str, int]) -> None:
    """Delete what whiteout entry `raw` hides; the directory's mtime is left as it was.

    The directory holding the whiteout is made if missing, and a symlink (or any other
    non-directory) on its path is replaced by a directory, not followed: `apply` makes that
    directory in the layer's own dir, and overlay shows it, empty but for this layer's
    entries, over whatever non-directory the layers below have at that path (see `Unpacker`;
    in pass one everything in the tree is below this layer).
    """
    name = os.fsdecode(raw)
    if "\0" in name:
        raise LayerError(f"{label}: entry {name!r}: NUL byte in the name")
    rel = clean_name(name)
    parent, _, base = rel.rpartition("/")
    if base.startswith(_META_PREFIX) and base != _OPAQUE:
        return  # AUFS bookkeeping, not a whiteout of anything (moby skips it too)
    if any(part.startswith(_WHITEOUT) for part in parent.split("/")):
        raise LayerError(f"{label}: entry {name!r}: a path through a whiteout")
    target = None if base == _OPAQUE else base[len(_WHITEOUT):]
    if target in ("", ".", ".."):
        raise LayerError(f"{label}: entry {name!r}: a whiteout of {target or 'nothing'!r}")
    try:
        dir_fd = makedirs_in_root(root_fd, parent, on_nondir=_hide)
    except OSError as exc:
        raise LayerError(f"{label}: entry {name!r}: {exc.strerror or exc}") from exc
    try:
        before = os.fstat(dir_fd)
        for child in [target] if target is not None else os.listdir(dir_fd):
            remove_entry(dir_fd, child)
        os.utime(dir_fd, ns=(before.st_atime_ns, before.st_mtime_ns))
    except OSError as exc:
        raise LayerError(f"{label}: entry {name!r}: {exc.strerror or exc}") from exc
    finally:
        os.close(dir_fd)
    _forget(dir_times, f"{parent}/{target}".lstrip("/") if target is not None else parent,
            itself=target is not None)


def _hide(_parent: int, _name: str, _target: str | None) -> bool:
    """A non-directory on a whiteout's path is below this layer: a directory hides it."""
    return True


def _forget(dir_times: dict[str, int], path: str, *, itself: bool) -> None:
    """Drop the remembered mtimes of what a whiteout deleted: below `path` (and `path`)."""
    prefix = f"{path}/" if path else ""
    for key in [k for k in dir_times if k.startswith(prefix) or (itself and k == path)]:
        del dir_times[key]


def _fix_dir_times(root_fd: int, dir_times: dict[str, int]) -> None:
    """Every directory's mtime (and atime): from the last entry naming it, else 0.

    Any depth: one fd, down by name and up by `..` (the tree is ours alone); `rel` is the
    name the layers give the dir the fd is on. A symlink to a directory keeps the mtime its
    own entry gave it.
    """
    fd, rel = os.dup(root_fd), ""
    try:
        stack = [sorted_subdirs(fd)]
        while stack:
            if not stack[-1]:
                stack.pop()
                if stack:
                    fd, rel = move_dir_fd(fd, ".."), rel.rpartition("/")[0]
                continue
            name = stack[-1].pop()
            child = f"{rel}/{name}" if rel else name
            mtime = dir_times.get(child, 0)
            os.utime(name, ns=(mtime, mtime), dir_fd=fd, follow_symlinks=False)
            fd, rel = move_dir_fd(fd, name), child
            stack.append(sorted_subdirs(fd))
    finally:
        os.close(fd)
    os.utime(root_fd, ns=(0, 0))
