"""Layers: an overlay upper dir → a deterministic OCI layer tar, and a tar archive → a directory.

This module owns two conversions:

- `capture(upper, lowers, tar_path)`: what a step changed (its overlayfs upper dir, no longer
  mounted) becomes an OCI layer changeset tar, written and sha256-hashed in one pass; the hash
  is the layer's diff_id (image-spec config.md, `rootfs.diff_ids`). Overlay-native whiteouts
  (0/0 char devices, the `opaque` xattr; Documentation/filesystems/overlayfs.rst) become OCI
  `.wh.<name>` / `.wh..wh..opq` entries (image-spec layer.md, "Whiteouts"), only in the stream:
  the upper dir is not modified.
- `unpack_archive(archive, root, dest)`: ADD of a local tar (plain, gzip, bzip2, xz, zstd) into
  a directory inside a root, every entry resolved *inside* the root by `rootpath`.

What it must not do: mount anything, import `tarfile` (see `tarformat.py` for why), look up user
or group names, build a host path by joining an entry name, or follow a link out of the root.
The upper dir and the lower dirs are trusted store directories that nothing modifies while a
capture runs; archive contents are not trusted at all (SECURITY.md families A–E).

Vocabulary (go-containerregistry's): `diff_id` is the sha256 of the *uncompressed* tar; the
digest of a compressed blob is the store's business, not this module's.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from stepbuild.errors import LayerError
from stepbuild.rootpath import makedirs_in_root, open_in_root, resolve_parent
from stepbuild.tarformat import (
    BLKTYPE,
    CHRTYPE,
    DIRTYPE,
    END_OF_ARCHIVE,
    FIFOTYPE,
    LNKTYPE,
    REGTYPE,
    SYMTYPE,
    Header,
    Readable,
    TarReader,
    encode_header,
    padding,
)

__all__ = ["LayerBlob", "capture", "is_archive", "unpack_archive"]

_CHUNK = 1 << 20
_NS = 1_000_000_000
_WHITEOUT_PREFIX = b".wh."
_OPAQUE_MARKER = b".wh..wh..opq"
# `trusted.overlay.*`, or `user.overlay.*` on a `userxattr` mount (overlayfs.rst, "User xattr")
_OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
# Overlay state that makes an upper dir an incomplete diff (redirect_dir moves, metacopy
# files without data) or that overlay never writes into an upper dir (whiteouts of the
# nested-overlay "xwhiteout" kind): refuse it (BuildKit's checkRedirect; SECURITY.md rule 10).
_REFUSED_OVERLAY_KEYS = frozenset({"redirect", "metacopy", "whiteout", "whiteouts"})


@dataclass(frozen=True, slots=True)
class LayerBlob:
    """A captured layer: the uncompressed tar at `path`, `size` bytes, named by `diff_id`."""

    diff_id: str  # "sha256:<hex>" of the uncompressed tar bytes
    size: int  # bytes of the tar
    path: Path  # the tar file written


# =============================================================================================
# capture: upper dir → layer tar


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


def _is_whiteout(st: os.stat_result) -> bool:
    """An overlay whiteout: a character device with device number 0/0 (overlayfs.rst)."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _xattrs(path: bytes) -> dict[str, bytes]:
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


def _is_overlay_xattr(name: str) -> bool:
    return name.startswith(_OVERLAY_XATTR_PREFIXES)


def _kept_xattrs(xattrs: dict[str, bytes]) -> tuple[tuple[str, bytes], ...]:
    """The xattrs a layer records: all but overlay's (security.capability included)."""
    return tuple(sorted((k, v) for k, v in xattrs.items() if not _is_overlay_xattr(k)))


def _overlay_opaque(path: bytes, xattrs: dict[str, bytes], is_dir: bool) -> bool:
    """Whether an upper entry is an opaque dir; raise LayerError for state we cannot convert."""
    opaque = False
    for name, value in xattrs.items():
        if not _is_overlay_xattr(name):
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


def _look_below(below: list[bytes], name: bytes) -> tuple[_Hit | None, list[bytes]]:
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
            if hit is None and not _is_whiteout(st):
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
        and _kept_xattrs(xattrs) == _kept_xattrs(_xattrs(path))
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
        if _overlay_opaque(upper, _xattrs(upper), is_dir=True):
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
            if _is_whiteout(st) and _look_below(below, name)[0] is not None:
                self._marker(rel + _WHITEOUT_PREFIX + name)
        for name, st in entries:
            if _is_whiteout(st):
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
        xattrs = _xattrs(path)
        is_dir = stat.S_ISDIR(st.st_mode)
        opaque = _overlay_opaque(path, xattrs, is_dir)
        if not is_dir:
            self._nondir(path, rel + name, st, xattrs)
            return
        hit, lower_dirs = _look_below(below, name)
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
            xattrs=_kept_xattrs(xattrs),
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


# =============================================================================================
# unpack: tar archive → directory inside a root

# (magic, name): gzip RFC 1952, bzip2 "BZh", xz file format, zstd RFC 8878 frame magic
_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
# Linux dev_t as the kernel stores it: 12-bit major, 20-bit minor (include/linux/kdev_t.h)
_MAX_MAJOR = (1 << 12) - 1
_MAX_MINOR = (1 << 20) - 1


class _Decompressor(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class _Decompressed:
    """A decompressing reader whose format errors surface as LayerError."""

    def __init__(
        self, stream: _Decompressor, kind: str, errors: tuple[type[BaseException], ...]
    ) -> None:
        self._stream = stream
        self._kind = kind
        self._errors = errors

    def read(self, n: int = -1, /) -> bytes:
        try:
            return self._stream.read(n)
        except self._errors as exc:
            raise LayerError(f"corrupt {self._kind} data: {exc}") from exc

    def close(self) -> None:
        self._stream.close()


def _decompressor(raw: BinaryIO, kind: str) -> _Decompressed:
    # Imported here: a build that never ADDs an archive never pays for these modules.
    import lzma
    import zlib

    errors: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError, zlib.error)
    stream: _Decompressor
    # The decompressors do not own `raw`; _open_archive closes both.
    if kind == "gzip":
        import gzip

        stream = gzip.GzipFile(fileobj=raw, mode="rb")  # noqa: SIM115
    elif kind == "bzip2":
        import bz2

        stream = bz2.BZ2File(raw)  # noqa: SIM115
    elif kind == "xz":
        stream = lzma.LZMAFile(raw)  # noqa: SIM115
        errors += (lzma.LZMAError,)
    else:
        try:
            import zstandard
        except ImportError as exc:
            raise LayerError("zstd archive, but the zstandard package is not installed") from exc
        stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        errors += (zstandard.ZstdError,)
    return _Decompressed(stream, kind, errors)


@contextmanager
def _open_archive(path: Path) -> Iterator[Readable]:
    """The archive's tar bytes, decompressed by its magic bytes (not by its file name)."""
    with open(path, "rb") as raw:
        head = raw.read(6)
        raw.seek(0)
        kind = next((name for magic, name in _MAGICS if head.startswith(magic)), None)
        if kind is None:
            yield raw
            return
        stream = _decompressor(raw, kind)
        try:
            yield stream
        finally:
            stream.close()


def is_archive(path: Path) -> bool:
    """Whether ADD should unpack `path`: it is a tar, maybe compressed, with at least one entry.

    Like Docker's IsArchivePath: a compressed file that does not hold a tar, or an empty tar,
    is not an archive (ADD then copies it as it is). OSError if `path` cannot be opened.
    """
    try:
        with _open_archive(path) as stream:
            return TarReader(stream).first_is_header()
    except LayerError:
        return False


def unpack_archive(
    archive: Path, root: Path, dest: str, *, uid: int | None = None, gid: int | None = None
) -> None:
    """Extract `archive` into directory `dest` inside `root`, as ADD does with a local archive.

    `dest` and every entry are resolved inside `root` (rootpath): entry names are taken
    relative to `dest`, with a leading `/` and any `..` that would climb above `dest`
    removed lexically (contained, not refused); symlinks met on the way, from the root or
    from the archive, are followed within the root. Missing directories are made 0755.
    Semantics per entry (image-spec layer.md, "Changeset over existing files"): an existing
    directory is merged with a directory entry (its attributes replaced); anything else
    existing is removed first (a directory recursively); the last of duplicate entries wins.
    Symlinks are written as they are; hard links may only name files this archive created;
    devices are made with mknod; numeric ids only, or `uid`/`gid` when given (--chown);
    mode bits including setuid/setgid, xattrs (not overlay's) and mtimes are restored on
    regular files and directories, mode and mtime on the rest; directory attributes are set
    after their children are written.

    Raises LayerError naming the entry for what cannot be contained: a NUL in a name, a
    non-directory entry for `dest` itself, device numbers out of range, a hard link to
    something the archive did not create, failed syscalls (mknod without CAP_MKNOD, ...);
    and LayerError("not a tar archive") / corrupt or truncated data. Entries before the
    failing one stay written. Data is streamed: no member is ever held in memory.
    """
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with _open_archive(archive) as stream:
            _Unpacker(root_fd, dest, uid, gid, str(archive)).run(TarReader(stream))
    finally:
        os.close(root_fd)


def _clean(name: str) -> str:
    """An entry name made relative and lexically clean; `..` never climbs above the start."""
    parts: list[str] = []
    for part in name.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Unpacker:
    """One extraction: entries applied in archive order, directory attributes at the end."""

    def __init__(
        self, root_fd: int, dest: str, uid: int | None, gid: int | None, label: str
    ) -> None:
        if "\0" in dest:
            raise LayerError(f"destination {dest!r} contains a NUL byte")
        self._root = root_fd
        self._dest = _clean(dest)
        self._uid = uid
        self._gid = gid
        self._label = label
        self._made: set[tuple[int, int]] = set()  # (st_dev, st_ino) of non-dirs we created
        self._dirs: dict[str, Header] = {}  # directory entries, attributes still to set

    def run(self, reader: TarReader) -> None:
        try:
            os.close(
                makedirs_in_root(self._root, self._dest, uid=self._uid or 0, gid=self._gid or 0)
            )
        except OSError as exc:
            raise LayerError(f"destination {self._dest or '/'}: {exc.strerror}") from exc
        for header in reader:
            name = os.fsdecode(header.name)
            try:
                self._entry(reader, header, name)
            except OSError as exc:
                raise LayerError(f"{self._label}: entry {name!r}: {exc.strerror or exc}") from exc
        self._finish_dirs()

    def _fail(self, name: str, problem: str) -> LayerError:
        return LayerError(f"{self._label}: entry {name!r}: {problem}")

    def _join(self, rel: str) -> str:
        return f"{self._dest}/{rel}" if self._dest else rel

    def _owner(self, h: Header) -> tuple[int, int]:
        return (
            h.uid if self._uid is None else self._uid,
            h.gid if self._gid is None else self._gid,
        )

    def _entry(self, reader: TarReader, h: Header, name: str) -> None:
        if "\0" in name:
            raise self._fail(name, "NUL byte in the name")
        rel = _clean(name)
        if not rel:
            if h.type == DIRTYPE:
                return  # "./": the extraction directory itself, which exists already
            raise self._fail(name, "resolves to the extraction directory itself")
        parent, base = resolve_parent(
            self._root, self._join(rel), create=True, uid=self._uid or 0, gid=self._gid or 0
        )
        try:
            if h.type == DIRTYPE:
                self._directory(parent, base)
                self._dirs[rel] = h
            elif h.type == LNKTYPE:
                self._hardlink(parent, base, h, name)
            else:
                remove_entry(parent, base)
                if h.type == REGTYPE:
                    self._regular(reader, parent, base, h)
                else:
                    self._special(parent, base, h, name)
        finally:
            os.close(parent)

    def _directory(self, parent: int, base: str) -> None:
        try:
            if stat.S_ISDIR(os.lstat(base, dir_fd=parent).st_mode):
                return  # merged; attributes are set in _finish_dirs
        except FileNotFoundError:
            pass
        remove_entry(parent, base)
        os.mkdir(base, 0o700, dir_fd=parent)

    def _set_attributes(self, fd: int, h: Header) -> None:
        # chown first: it clears setuid/setgid and security.capability (chown(2), capabilities(7))
        os.fchown(fd, *self._owner(h))
        os.fchmod(fd, h.mode)
        for key, value in h.xattrs:
            if not _is_overlay_xattr(key):  # overlay state is never data (SECURITY.md rule 10)
                os.setxattr(fd, key, value)
        os.utime(fd, ns=(h.mtime_ns, h.mtime_ns))

    def _regular(self, reader: TarReader, parent: int, base: str, h: Header) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, 0o600, dir_fd=parent)
        try:
            while chunk := reader.read(_CHUNK):
                _write_all(fd, chunk)
            self._set_attributes(fd, h)
            st = os.fstat(fd)
            self._made.add((st.st_dev, st.st_ino))
        finally:
            os.close(fd)

    def _special(self, parent: int, base: str, h: Header, name: str) -> None:
        if h.type == SYMTYPE:
            target = os.fsdecode(h.linkname)
            if "\0" in target or not target:
                raise self._fail(name, "empty symlink target or NUL byte in it")
            os.symlink(target, base, dir_fd=parent)  # written as it is; resolved only when used
        elif h.type in (CHRTYPE, BLKTYPE):
            if not (0 <= h.devmajor <= _MAX_MAJOR and 0 <= h.devminor <= _MAX_MINOR):
                raise self._fail(name, f"device number {h.devmajor}:{h.devminor} out of range")
            kind = stat.S_IFCHR if h.type == CHRTYPE else stat.S_IFBLK
            os.mknod(base, kind | 0o600, os.makedev(h.devmajor, h.devminor), dir_fd=parent)
        elif h.type == FIFOTYPE:
            os.mkfifo(base, 0o600, dir_fd=parent)
        os.chown(base, *self._owner(h), dir_fd=parent, follow_symlinks=False)
        if h.type != SYMTYPE:  # a symlink's mode is always 0777 on Linux
            _chmod_node(parent, base, h.mode)
        os.utime(base, ns=(h.mtime_ns, h.mtime_ns), dir_fd=parent, follow_symlinks=False)
        st = os.lstat(base, dir_fd=parent)
        self._made.add((st.st_dev, st.st_ino))

    def _hardlink(self, parent: int, base: str, h: Header, name: str) -> None:
        target = os.fsdecode(h.linkname)
        if "\0" in target:
            raise self._fail(name, "NUL byte in the hard link target")
        target_rel = _clean(target)
        if not target_rel:
            raise self._fail(name, "hard link to the extraction directory itself")
        tparent, tbase = resolve_parent(self._root, self._join(target_rel))
        try:
            try:
                tst = os.lstat(tbase, dir_fd=tparent)
            except FileNotFoundError:
                raise self._fail(name, f"hard link target {target!r} does not exist") from None
            if (tst.st_dev, tst.st_ino) not in self._made:
                # Only links to what this archive wrote: never to a file of the root it was
                # unpacked into, let alone outside it (SECURITY.md family B).
                raise self._fail(name, f"hard link to {target!r}, which the archive did not create")
            try:
                cur = os.lstat(base, dir_fd=parent)
                if (cur.st_dev, cur.st_ino) == (tst.st_dev, tst.st_ino):
                    return  # already that file
            except FileNotFoundError:
                pass
            remove_entry(parent, base)
            os.link(tbase, base, src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(tparent)

    def _finish_dirs(self) -> None:
        """Directory attributes, deepest first, once nothing more is written into them."""
        for rel in sorted(self._dirs, key=lambda r: r.count("/"), reverse=True):
            h = self._dirs[rel]
            try:
                fd = open_in_root(
                    self._root, self._join(rel), os.O_RDONLY | os.O_DIRECTORY, follow_last=False
                )
            except (FileNotFoundError, NotADirectoryError):
                continue  # replaced by a later entry, which won
            except OSError as exc:
                raise LayerError(f"{self._label}: entry {rel!r}: {exc.strerror}") from exc
            try:
                self._set_attributes(fd, h)
            except OSError as exc:
                raise LayerError(f"{self._label}: entry {rel!r}: {exc.strerror}") from exc
            finally:
                os.close(fd)


def _chmod_node(parent: int, base: str, mode: int) -> None:
    """chmod the fifo or device just made at `base`, never through a symlink."""
    try:
        # fchmodat(AT_SYMLINK_NOFOLLOW): glibc emulates it through /proc/self/fd
        os.chmod(base, mode, dir_fd=parent, follow_symlinks=False)
    except (NotImplementedError, ValueError):
        # Without /proc only the following form is left: make sure nothing swapped a
        # symlink in since mknod (nothing else writes into the root while we unpack).
        if stat.S_ISLNK(os.lstat(base, dir_fd=parent).st_mode):
            raise OSError(errno.ELOOP, "a symlink replaced the node just made", base) from None
        os.chmod(base, mode, dir_fd=parent)


def remove_entry(parent: int, base: str) -> None:
    """Remove whatever is at `base` in `parent` (a directory recursively, fd-relative)."""
    try:
        st = os.lstat(base, dir_fd=parent)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        # shutil.rmtree with dir_fd (3.11+) walks with openat/unlinkat and never follows links
        shutil.rmtree(base, dir_fd=parent)
    else:
        os.unlink(base, dir_fd=parent)


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
