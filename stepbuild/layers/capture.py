"""Capture: an overlay upper dir → a deterministic OCI layer tar.

`capture(upper, lowers, tar_path)`: what a step changed (its overlayfs upper dir, no longer
mounted) becomes an OCI layer changeset tar, written and sha256-hashed in one pass; the hash
is the layer's diff_id (image-spec config.md, `rootfs.diff_ids`). Overlay-native whiteouts
(0/0 char devices, the `opaque` xattr; Documentation/filesystems/overlayfs.rst) become OCI
`.wh.<name>` / `.wh..wh..opq` entries (image-spec layer.md, "Whiteouts"), only in the stream:
the upper dir is not modified. The overlay helpers it reads with (`is_whiteout`,
`read_xattrs`, `kept_xattrs`, `look_below`, `is_overlay_xattr`) are public for `apply.py`,
which does the inverse, and `unpack.py`, which drops overlay xattrs found in archives.
Unpacking an archive into a directory is `unpack.py`'s job.

What it must not do: mount anything, import `tarfile` (see `tarformat.py` for why), look up user
or group names. The upper dir and the lower dirs are trusted store directories that nothing
modifies while a capture runs.

Vocabulary (go-containerregistry's): `diff_id` is the sha256 of the *uncompressed* tar; the
digest of a compressed blob is the store's business, not this module's.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stepbuild.errors import LayerError
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
    "clamp_mtimes",
    "is_overlay_xattr",
    "is_whiteout",
    "kept_xattrs",
    "look_below",
    "read_xattrs",
]

_CHUNK = 1 << 20
_NS = 1_000_000_000
_WHITEOUT_PREFIX = b".wh."
_OPAQUE_MARKER = b".wh..wh..opq"
# `trusted.overlay.*`, or `user.overlay.*` on a `userxattr` mount (overlayfs.rst, "User xattr")
_OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
# Overlay state that makes an upper dir an incomplete diff (redirect_dir moves, metacopy
# files without data) or that overlay never writes into an upper dir (whiteouts of the
# nested-overlay "xwhiteout" kind): refuse it (BuildKit's checkRedirect; docs/security.md rule 10).
_REFUSED_OVERLAY_KEYS = frozenset({"redirect", "metacopy", "whiteout", "whiteouts"})


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
    out = _HashedOutput(tar_path)
    try:
        walk = _Capture(out, [os.fsencode(p) for p in lowers], source_date_epoch)
        walk.run(os.fsencode(upper))
        if walk.entries:
            out.write(END_OF_ARCHIVE)
        out.close()
    except BaseException:
        out.close()
        tar_path.unlink(missing_ok=True)
        raise
    if not walk.entries:
        tar_path.unlink()
        return None
    return LayerBlob(diff_id=out.diff_id(), size=out.size, path=tar_path)


class _HashedOutput:
    """A file written once, hashed on the way: the tar is never read back to hash it."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "wb", buffering=_CHUNK)  # noqa: SIM115 - closed by close()
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


def is_whiteout(st: os.stat_result) -> bool:
    """An overlay whiteout: a character device with device number 0/0 (overlayfs.rst)."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def read_xattrs(path: bytes) -> dict[str, bytes]:
    """All xattrs of `path` (not following a symlink); {} where the filesystem has no xattrs."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ENOTSUP:
            return {}
        raise
    values = {}
    for name in names:
        try:
            values[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
    return values


def is_overlay_xattr(name: str) -> bool:
    """Overlay's own state (`trusted.overlay.*`, `user.overlay.*`), never data in a layer."""
    return name.startswith(_OVERLAY_XATTR_PREFIXES)


def kept_xattrs(xattrs: dict[str, bytes]) -> tuple[tuple[str, bytes], ...]:
    """The xattrs a layer records: all but overlay's (security.capability included)."""
    return tuple(sorted((k, v) for k, v in xattrs.items() if not is_overlay_xattr(k)))


def _overlay_opaque(path: bytes, xattrs: dict[str, bytes], is_dir: bool) -> bool:
    """Whether an upper entry is an opaque dir; raise LayerError for state we cannot convert."""
    opaque = False
    for name, value in xattrs.items():
        if not is_overlay_xattr(name):
            continue
        key = name.split(".", 2)[2]  # escaped `*.overlay.overlay.*` xattrs are plain data
        if key in _REFUSED_OVERLAY_KEYS:
            raise LayerError(
                f"upper dir entry {os.fsdecode(path)} has overlay state {name}: "
                "the layer would be incomplete",
                hint="mount the overlay with redirect_dir=off,metacopy=off,index=off",
            )
        if key == "opaque" and is_dir:
            if value != b"y":
                raise LayerError(f"unknown overlay state {name}={value!r} on {os.fsdecode(path)}")
            opaque = True
    return opaque


def _lower_opaque(path: bytes) -> bool:
    for prefix in _OVERLAY_XATTR_PREFIXES:
        try:
            if os.getxattr(path, prefix + "opaque", follow_symlinks=False) == b"y":
                return True
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise
    return False


_Hit = tuple[bytes, os.stat_result]


def look_below(below: list[bytes], name: bytes) -> tuple[_Hit | None, list[bytes]]:
    """Overlay's lookup of `name` in the lower dirs `below` (top first, where the parent is
    visible): the topmost visible entry, or None if there is none or a whiteout hides it; and
    the lower dirs the lookup continues in when that entry is a directory.

    As fs/overlayfs/namei.c does: a whiteout or a non-directory ends the lookup, and so does
    an opaque directory, after itself.
    """
    hit: _Hit | None = None
    dirs: list[bytes] = []
    for lower in below:
        path = lower + b"/" + name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            if hit is None and not is_whiteout(st):
                hit = (path, st)
            break
        if hit is None:
            hit = (path, st)
        dirs.append(path)
        if _lower_opaque(path):
            break
    return hit, dirs


def _copied_up(st: os.stat_result, xattrs: dict[str, bytes], hit: _Hit | None) -> bool:
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


class _Capture:
    """One walk of an upper dir, writing tar entries to `out` as it goes."""

    def __init__(self, out: _HashedOutput, lowers: list[bytes], epoch: int | None) -> None:
        self._out = out
        self._lowers = lowers
        self._epoch = epoch
        self._links: dict[tuple[int, int], bytes] = {}  # (st_dev, st_ino) → first name
        self._buf = memoryview(bytearray(_CHUNK))
        self.entries = 0

    def run(self, upper: bytes) -> None:
        below = list(self._lowers)
        if _overlay_opaque(upper, read_xattrs(upper), is_dir=True):
            if below:
                self._marker(_OPAQUE_MARKER)
            below = []
        self._dir(upper, b"", below)

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

    def _dir(self, path: bytes, rel: bytes, below: list[bytes]) -> None:
        """Emit the contents of upper dir `path` (layer name prefix `rel`)."""
        entries = [(name, os.lstat(path + b"/" + name)) for name in sorted(os.listdir(path))]
        for name, st in entries:
            # A whiteout with nothing below hides nothing (e.g. left inside an opaque dir).
            if is_whiteout(st) and look_below(below, name)[0] is not None:
                self._marker(rel + _WHITEOUT_PREFIX + name)
        for name, st in entries:
            if is_whiteout(st):
                continue
            if name.startswith(_WHITEOUT_PREFIX):
                raise LayerError(
                    f"{os.fsdecode(rel + name)}: a file named .wh.* cannot be stored in an "
                    "OCI layer (the name means a whiteout)"
                )
            self._child(path + b"/" + name, rel, name, st, below)

    def _child(
        self, path: bytes, rel: bytes, name: bytes, st: os.stat_result, below: list[bytes]
    ) -> None:
        if stat.S_ISSOCK(st.st_mode):
            return  # tar cannot carry sockets; GNU tar and moby skip them too
        xattrs = read_xattrs(path)
        is_dir = stat.S_ISDIR(st.st_mode)
        opaque = _overlay_opaque(path, xattrs, is_dir)
        if not is_dir:
            self._nondir(path, rel + name, st, xattrs)
            return
        hit, lower_dirs = look_below(below, name)
        name_in_layer = rel + name + b"/"
        if opaque:
            self._put(self._header(name_in_layer, DIRTYPE, st, xattrs))
            if hit is not None and stat.S_ISDIR(hit[1].st_mode):
                self._marker(name_in_layer + _OPAQUE_MARKER)
            lower_dirs = []
        elif not _copied_up(st, xattrs, hit):
            self._put(self._header(name_in_layer, DIRTYPE, st, xattrs))
        self._dir(path, name_in_layer, lower_dirs)

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

    def _nondir(
        self, path: bytes, name: bytes, st: os.stat_result, xattrs: dict[str, bytes]
    ) -> None:
        mode = st.st_mode
        if stat.S_ISREG(mode):
            self._regular(path, name, st, xattrs)
        elif stat.S_ISLNK(mode):
            self._put(self._header(name, SYMTYPE, st, xattrs, linkname=os.readlink(path)))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = CHRTYPE if stat.S_ISCHR(mode) else BLKTYPE
            major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
            self._put(self._header(name, kind, st, xattrs, devmajor=major, devminor=minor))
        elif stat.S_ISFIFO(mode):
            self._put(self._header(name, FIFOTYPE, st, xattrs))

    def _regular(
        self, path: bytes, name: bytes, st: os.stat_result, xattrs: dict[str, bytes]
    ) -> None:
        if st.st_nlink > 1:
            first = self._links.setdefault((st.st_dev, st.st_ino), name)
            if first != name:
                # The inode's data and xattrs travel with its first name only.
                self._put(self._header(name, LNKTYPE, st, {}, linkname=first))
                return
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
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
    a builder that imported the layer from a shared cache. Children before their directory.
    """
    for directory, dirs, files in os.walk(root, topdown=False):
        for name in (*files, *dirs):
            _clamp(os.path.join(directory, name), epoch)
    _clamp(str(root), epoch)


def _clamp(path: str, epoch: int) -> None:
    info = os.lstat(path)
    if info.st_mtime > epoch:
        os.utime(path, (min(info.st_atime, epoch), epoch), follow_symlinks=False)
