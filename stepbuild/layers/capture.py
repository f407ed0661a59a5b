"""Capture: an overlay upper dir → a deterministic OCI layer tar.

`capture(upper, lowers, tar_path)`: what a step changed (its overlayfs upper dir, no longer
mounted) becomes an OCI layer changeset tar, written and sha256-hashed in one pass; the hash
is the layer's diff_id (image-spec config.md, `rootfs.diff_ids`). Overlay-native whiteouts
(0/0 char devices, the `opaque` xattr; Documentation/filesystems/overlayfs.rst) become OCI
`.wh.<name>` / `.wh..wh..opq` entries (image-spec layer.md, "Whiteouts"), only in the stream:
the upper dir is not modified. It reads the upper and lower dirs with
`overlayfs.py`'s helpers, which `apply.py` (the inverse) shares. Unpacking an archive into a
directory is `unpack.py`'s job.

What it must not do: mount anything, import `tarfile` (see `tar.py` for why), look up user
or group names. The upper dir and the lower dirs are trusted store directories that nothing
modifies while a capture runs.

Vocabulary (go-containerregistry's): `diff_id` is the sha256 of the *uncompressed* tar; the
digest of a compressed blob is the store's business, not this module's.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from stepbuild.errors import LayerError
from stepbuild.fs.trees import UNLIMITED, move_dir_fd, walk_tree
from stepbuild.layers.overlayfs import (
    Hit,
    LowerWalk,
    fd_path,
    is_whiteout,
    kept_xattrs,
    overlay_opaque,
    read_xattrs,
)
from stepbuild.layers.tar import (
    BLKTYPE,
    CHRTYPE,
    DIRTYPE,
    END_OF_ARCHIVE,
    FIFOTYPE,
    LNKTYPE,
    REGTYPE,
    SYMTYPE,
    Header,
    encode_header,
    padding,
)

__all__ = [
    "LayerBlob",
    "capture",
    "capture_stream",
    "clamp_mtimes",
]

_CHUNK = 1 << 20
_NS = 1_000_000_000
_WHITEOUT_PREFIX = b".wh."
_OPAQUE_MARKER = b".wh..wh..opq"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class LayerBlob:
    """A captured layer: the uncompressed tar at `path`, `size` bytes, named by `diff_id`."""

    diff_id: str  # "sha256:<hex>" of the uncompressed tar bytes
    size: int  # bytes of the tar
    path: Path  # the tar file written


def capture(
    upper: Path,
    lowers: Sequence[Path],
    tar_path: Path,
    *,
    source_date_epoch: int | None = None,
) -> LayerBlob | None:
    """Write the changes recorded in overlay upper dir `upper` to `tar_path` as an OCI layer.

    `lowers` are the overlay's lower dirs, top first, as plain directories (overlay-native
    whiteouts and opaque xattrs in them are honoured, as the kernel would). Returns None, and
    leaves no file, when there is nothing to record: a step that changes nothing adds no layer.

    The stream is deterministic: entries in tree order, parents before children; in each
    directory its opaque marker first, then its `.wh.` whiteouts, then its entries, each group
    in byte order of the names (image-spec layer.md: "Implementations SHOULD generate layers
    such that the whiteout files appear before sibling directory entries"). Numeric ids only,
    whole-second mtimes clamped to `source_date_epoch` when given, xattrs except overlay's
    own, hard links within the layer kept as links. See `tarformat` for the header layout.

    Left out: the root directory entry; directories overlay only copied up (same mode,
    owner, mtime and xattrs as the lower dir they were copied from: a change deeper down
    forced the copy, not a change to them); whiteouts with nothing below them to hide;
    sockets (tar cannot carry them). Raises LayerError for `redirect`/`metacopy` overlay state
    (mount with redirect_dir=off,metacopy=off), for files really named `.wh.*` (OCI cannot
    express them), and if a file changes while it is read. `tar_path` is removed on error.
    It is not fsynced: committing it durably is the store's job.

    Both overlay xattr namespaces are read as overlay state whatever the mount used, so a
    step's own `user.overlay.*` xattrs are dropped (and a `user.overlay.redirect` refused).
    """
    out = _HashedOutput(open(tar_path, "wb", buffering=_CHUNK))  # noqa: SIM115 - closed below
    try:
        entries = _walk(out, upper, lowers, source_date_epoch)
        out.close()
    except BaseException:
        out.close()
        tar_path.unlink(missing_ok=True)
        raise
    if not entries:
        tar_path.unlink()
        return None
    return LayerBlob(diff_id=out.diff_id(), size=out.size, path=tar_path)


def capture_stream(upper: Path, lowers: Sequence[Path], stream: BinaryIO, *,
                   source_date_epoch: int | None = None) -> str | None:
    """`capture` written to an open `stream` (`stepbuild build -o -`: a pipe), the same
    bytes; returns their sha256, or None when there was nothing to record (then nothing was
    written). The stream is left open; on error it holds a truncated tar."""
    out = _HashedOutput(stream)
    return out.diff_id() if _walk(out, upper, lowers, source_date_epoch) else None


def _walk(out: _HashedOutput, upper: Path, lowers: Sequence[Path],
          source_date_epoch: int | None) -> int:
    """Write the tar of `upper` over `lowers` to `out`; return its number of entries."""
    walk = _Capture(out, [os.fsencode(p) for p in lowers], source_date_epoch)
    walk.run(os.fsencode(upper))
    if walk.entries:
        out.write(END_OF_ARCHIVE)
    return walk.entries


class _HashedOutput:
    """A file written once, hashed on the way: the tar is never read back to hash it."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self._sha.update(data)
        self._file.write(data)
        self.size += len(data)

    def close(self) -> None:
        self._file.close()

    def diff_id(self) -> str:
        return "sha256:" + self._sha.hexdigest()


def _copied_up(st: os.stat_result, xattrs: dict[str, bytes], hit: Hit | None) -> bool:
    """An upper dir overlay made only to hold a changed child: identical to the lower dir.

    Copy-up preserves mode, owner, mtime (to the nanosecond) and xattrs (overlayfs.rst,
    "Non-directories" / copy_up); changing the dir itself changes one of them.
    """
    if hit is None:
        return False
    path, low = hit
    return (
        stat.S_ISDIR(low.st_mode)
        and st.st_mode == low.st_mode
        and (st.st_uid, st.st_gid) == (low.st_uid, low.st_gid)
        and st.st_mtime_ns == low.st_mtime_ns
        and kept_xattrs(xattrs) == kept_xattrs(read_xattrs(path))
    )


@dataclass(slots=True)
class _Frame:
    """A directory of the upper dir being emitted."""

    rel: bytes  # its name in the layer with a trailing "/", b"" for the top
    todo: list[tuple[bytes, os.stat_result]]  # entries still to emit, last one first
    below: list[int]  # the lowers (LowerWalk indexes) that hold this dir as a dir


class _Capture:
    """One walk of an upper dir, writing tar entries to `out` as it goes.

    Iterative, with one open fd on the upper dir that goes down by name and back up by `..`
    (the upper dir is ours alone) and one per lower dir (`LowerWalk`): any depth costs
    neither stack frames nor descriptors, and every call is relative to an open dir, so no
    path grows past PATH_MAX.
    """

    def __init__(self, out: _HashedOutput, lowers: list[bytes], epoch: int | None) -> None:
        self._out = out
        self._lowers = lowers
        self._epoch = epoch
        self._links: dict[tuple[int, int], bytes] = {}  # (st_dev, st_ino) → first name
        self._buf = memoryview(bytearray(_CHUNK))
        self._upper = b""
        self.entries = 0

    def run(self, upper: bytes) -> None:
        self._upper = upper
        lowers = LowerWalk(self._lowers)
        fd = os.open(upper, _DIR_FLAGS)
        try:
            below = lowers.all()
            if overlay_opaque(upper, read_xattrs(upper), is_dir=True):
                if below:
                    self._marker(_OPAQUE_MARKER)
                below = []
            stack = [self._frame(fd, b"", below, lowers)]
            while stack:
                frame = stack[-1]
                if not frame.todo:
                    stack.pop()
                    if stack:
                        fd = move_dir_fd(fd, b"..")
                        lowers.up(frame.below)
                    continue
                name, st = frame.todo.pop()
                dirs = self._child(fd, frame, name, st, lowers)
                if dirs is not None:
                    fd = move_dir_fd(fd, name)
                    lowers.down(dirs, name)
                    stack.append(self._frame(fd, frame.rel + name + b"/", dirs, lowers))
        finally:
            os.close(fd)
            lowers.close()

    def _put(self, header: Header) -> None:
        self._out.write(encode_header(header))
        self.entries += 1

    def _marker(self, name: bytes) -> None:
        """An OCI whiteout: an empty regular file with fixed metadata (mode 0, as moby and
        containerd write them); its metadata is never seen, only its name matters."""
        self._put(Header(name=name, type=REGTYPE))

    def _mtime_ns(self, st: os.stat_result) -> int:
        seconds = st.st_mtime_ns // _NS
        if self._epoch is not None:
            seconds = min(seconds, self._epoch)
        return seconds * _NS

    def _frame(self, fd: int, rel: bytes, below: list[int], lowers: LowerWalk) -> _Frame:
        """Upper dir `fd` (layer name prefix `rel`): its whiteouts emitted, the rest to do."""
        names = sorted(os.fsencode(name) for name in os.listdir(fd))  # an fd lists str names
        entries = [(name, os.lstat(name, dir_fd=fd)) for name in names]
        todo = []
        for name, st in entries:
            if not is_whiteout(st):
                todo.append((name, st))
            # A whiteout with nothing below hides nothing (e.g. left inside an opaque dir).
            elif lowers.look(below, name)[0] is not None:
                self._marker(rel + _WHITEOUT_PREFIX + name)
        todo.reverse()
        return _Frame(rel, todo, below)

    def _child(self, fd: int, frame: _Frame, name: bytes, st: os.stat_result,
               lowers: LowerWalk) -> list[int] | None:
        """Emit entry `name` of upper dir `fd`; for a dir to walk into, the lowers below it."""
        rel = frame.rel
        if name.startswith(_WHITEOUT_PREFIX):
            raise LayerError(
                f"{os.fsdecode(rel + name)}: a file named .wh.* cannot be stored in an "
                "OCI layer (the name means a whiteout)"
            )
        if stat.S_ISSOCK(st.st_mode):
            return None  # tar cannot carry sockets; GNU tar and moby skip them too
        xattrs = read_xattrs(fd_path(fd, name))
        is_dir = stat.S_ISDIR(st.st_mode)
        opaque = overlay_opaque(self._upper + b"/" + rel + name, xattrs, is_dir)
        if not is_dir:
            self._nondir(fd, name, rel + name, st, xattrs)
            return None
        hit, lower_dirs = lowers.look(frame.below, name)
        name_in_layer = rel + name + b"/"
        if opaque:
            self._put(self._header(name_in_layer, DIRTYPE, st, xattrs))
            if hit is not None and stat.S_ISDIR(hit[1].st_mode):
                self._marker(name_in_layer + _OPAQUE_MARKER)
            return []
        if not _copied_up(st, xattrs, hit):
            self._put(self._header(name_in_layer, DIRTYPE, st, xattrs))
        return lower_dirs

    def _header(
        self, name: bytes, kind: bytes, st: os.stat_result, xattrs: dict[str, bytes], **kw: object
    ) -> Header:
        return Header(
            name=name,
            type=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            mtime_ns=self._mtime_ns(st),
            xattrs=kept_xattrs(xattrs),
            **kw,  # type: ignore[arg-type]
        )

    def _nondir(self, dir_fd: int, base: bytes, name: bytes, st: os.stat_result,
                xattrs: dict[str, bytes]) -> None:
        mode = st.st_mode
        if stat.S_ISREG(mode):
            self._regular(dir_fd, base, name, st, xattrs)
        elif stat.S_ISLNK(mode):
            target = os.readlink(base, dir_fd=dir_fd)
            self._put(self._header(name, SYMTYPE, st, xattrs, linkname=target))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = CHRTYPE if stat.S_ISCHR(mode) else BLKTYPE
            major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
            self._put(self._header(name, kind, st, xattrs, devmajor=major, devminor=minor))
        elif stat.S_ISFIFO(mode):
            self._put(self._header(name, FIFOTYPE, st, xattrs))

    def _regular(self, dir_fd: int, base: bytes, name: bytes, st: os.stat_result,
                 xattrs: dict[str, bytes]) -> None:
        if st.st_nlink > 1:
            first = self._links.setdefault((st.st_dev, st.st_ino), name)
            if first != name:
                # The inode's data and xattrs travel with its first name only.
                self._put(self._header(name, LNKTYPE, st, {}, linkname=first))
                return
        fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            now = os.fstat(fd)
            if (now.st_ino, now.st_size) != (st.st_ino, st.st_size):
                raise LayerError(f"{os.fsdecode(name)} changed while the layer was captured")
            self._put(self._header(name, REGTYPE, st, xattrs, size=st.st_size))
            self._copy(fd, st.st_size, name)
        finally:
            os.close(fd)
        self._out.write(padding(st.st_size))

    def _copy(self, fd: int, size: int, name: bytes) -> None:
        left = size
        while left:
            n = os.readv(fd, [self._buf[: min(left, _CHUNK)]])
            if n == 0:
                raise LayerError(f"{os.fsdecode(name)} shrank while the layer was captured")
            self._out.write(self._buf[:n])
            left -= n


def clamp_mtimes(root: Path, epoch: int) -> None:
    """Set every mtime under `root` later than `epoch` to `epoch` (SOURCE_DATE_EPOCH).

    `capture` clamps the times it writes into the tar; the upper dir becomes the layer dir
    that later steps see, so it is clamped the same way, or a step would see other times than
    a builder that imported the layer from a shared cache. Children before their directory;
    any depth (`walk_tree`: the upper dir is ours alone).
    """

    def clamp(dir_fd: int, name: str) -> None:
        info = os.lstat(name, dir_fd=dir_fd)
        if info.st_mtime > epoch:
            os.utime(name, (min(info.st_atime, epoch), epoch), dir_fd=dir_fd,
                     follow_symlinks=False)

    walk_tree(os.open(root, _DIR_FLAGS), UNLIMITED, on_file=clamp, on_dir_done=clamp)
    info = os.lstat(root)
    if info.st_mtime > epoch:
        os.utime(root, (min(info.st_atime, epoch), epoch), follow_symlinks=False)
