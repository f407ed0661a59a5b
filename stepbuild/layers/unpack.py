"""Unpacking: a tar archive (plain, gzip, bzip2, xz, zstd) → a directory inside a root, safely.

This module owns one conversion and its parts:

- `unpack_archive(archive, root, dest)`: ADD of a local tar into a directory inside a root,
  every entry resolved *inside* the root by `rootpath`. `is_archive` is ADD's test for
  whether a file is one.
- `Unpacker`: the entry writer behind it, fed a `TarReader`; `flatten.py` uses it as it is
  and `apply.py` subclasses it to turn OCI whiteouts into overlay ones. Both unpack *layers*
  (`as_layer=True`), whose paths go through symlinks as overlay shows them (see `Unpacker`).
- `decompressor`, `clean_name`, `remove_entry`: the pieces other readers of archives share.

What it must not do: mount anything, import `tarfile` (see `tar.py` for why), look up user
or group names, build a host path by joining an entry name, or follow a link out of the root.
Archive contents are not trusted at all (docs/security.md families A–E).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from stepbuild.errors import LayerError
from stepbuild.fs.rootpath import (
    MAX_DEPTH,
    make_dir,
    makedirs_in_root,
    open_in_root,
    resolve_parent,
)
from stepbuild.fs.trees import remove_subtree
from stepbuild.fs.userns import owner_mapped, unmapped_message
from stepbuild.layers.overlayfs import is_overlay_xattr, is_whiteout
from stepbuild.layers.tar import (
    BLKTYPE,
    CHRTYPE,
    DIRTYPE,
    FIFOTYPE,
    LNKTYPE,
    REGTYPE,
    SYMTYPE,
    Header,
    Readable,
    TarReader,
)

if TYPE_CHECKING:
    from stepbuild.fs.rootpath import NonDirRule

__all__ = [
    "Unpacker",
    "clean_name",
    "decompressor",
    "is_archive",
    "remove_entry",
    "unpack_archive",
]

_CHUNK = 1 << 20
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
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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


def decompressor(raw: BinaryIO, kind: str) -> _Decompressed:
    # Imported here: a build that never ADDs an archive never pays for these modules.
    import lzma
    import zlib

    errors: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError, zlib.error)
    stream: _Decompressor
    # The decompressors do not own `raw`; open_archive closes both.
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


def compression(head: bytes) -> str | None:
    """"gzip", "bzip2", "xz", "zstd" or None (not compressed) for a file's first bytes."""
    return next((name for magic, name in _MAGICS if head.startswith(magic)), None)


@contextmanager
def open_archive(path: Path) -> Iterator[Readable]:
    """The archive's tar bytes, decompressed by its magic bytes (not by its file name)."""
    with open(path, "rb") as raw:
        kind = compression(raw.read(6))
        raw.seek(0)
        if kind is None:
            yield raw
            return
        stream = decompressor(raw, kind)
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
        with open_archive(path) as stream:
            return TarReader(stream).first_is_header()
    except LayerError:
        return False


def unpack_archive(
    archive: Path, root: Path, dest: str, *, uid: int | None = None, gid: int | None = None,
    label: str | None = None
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
    failing one stay written. Data is streamed: no member is ever held in memory. `label`
    names the archive in errors (default: its path).
    """
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with open_archive(archive) as stream:
            Unpacker(root_fd, dest, uid, gid, label or str(archive)).run(TarReader(stream))
    finally:
        os.close(root_fd)


def clean_name(name: str) -> str:
    """An entry name made relative and lexically clean; `..` never climbs above the start."""
    trimmed = name.strip("/")
    probe = f"/{trimmed}/"
    if "//" not in probe and "/./" not in probe and "/../" not in probe:
        return trimmed  # clean already: no loop over a deep tree's thousands of parts
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


class Unpacker:
    """One extraction: entries applied in archive order, directory attributes at the end.

    ADD follows every symlink on an entry's path, as a write through the image's merged
    view does. A layer (`as_layer=True`: `apply`, `flatten`) meets the non-directories on its
    paths as overlay shows them over the layers below, so that the tree `flatten` exports and
    the overlay of the layer dirs `apply` makes (what RUN and `stepbuild run` see) are one
    tree:

    - a symlink this layer wrote is followed, as everywhere (and any other non-directory it
      wrote is in the way: ENOTDIR);
    - a symlink of the layers below (or a file, a device, ...: there when the layer began)
      is replaced by a directory, not followed: `apply` unpacks each layer into an empty dir,
      so the layer's dir holds a real directory at that path, and overlay shows an upper
      layer's directory in place of a lower non-directory. Docker's overlay2 driver,
      containerd's overlayfs snapshotter and podman's overlay driver do the same (each
      unpacks a layer into its own dir); only copying appliers (vfs, containerd's native
      snapshotter) follow the lower link, so runtimes disagree on such a layer and we side
      with BuildKit's default, overlay;
    - a symlink this layer wrote whose target has a `.wh.*` component is refused: following
      it would make a real directory of a name OCI reserves for whiteouts (an entry cannot
      name one directly either).
    """

    def __init__(
        self, root_fd: int, dest: str, uid: int | None, gid: int | None, label: str,
        *, as_layer: bool = False,
    ) -> None:
        if "\0" in dest:
            raise LayerError(f"destination {dest!r} contains a NUL byte")
        self._root = root_fd
        self._dest = clean_name(dest)
        self._uid = uid
        self._gid = gid
        self._label = label
        self._as_layer = as_layer
        self._made: set[tuple[int, int]] = set()  # (st_dev, st_ino) of non-dirs we created
        self._dirs: dict[str, Header] = {}  # directory entries, attributes still to set
        self._near: _DirCursor | None = None  # the last parent dir resolved (run() owns it)

    def run(self, reader: TarReader) -> None:
        try:
            os.close(
                makedirs_in_root(self._root, self._dest, uid=self._uid or 0, gid=self._gid or 0)
            )
        except OSError as exc:
            raise LayerError(f"destination {self._dest or '/'}: {exc.strerror}") from exc
        self._near = _DirCursor(self._root)
        try:
            for header in reader:
                name = os.fsdecode(header.name)
                try:
                    self._entry(reader, header, name)
                except OSError as exc:
                    owner = self._owner(header)
                    why = (unmapped_message("{}:{}".format(*owner))  # rootless: an id not mapped
                           if exc.errno == errno.EINVAL and not owner_mapped(*owner)
                           else exc.strerror or exc)
                    raise LayerError(f"{self._label}: entry {name!r}: {why}") from exc
            self._finish_dirs()
        finally:
            self._near.close()
            self._near = None

    def _parent(self, path: str, on_nondir: NonDirRule | None) -> tuple[int, str]:
        """`resolve_parent(path, create=True, on_nondir=...)` inside the root: (a new fd,
        final name).

        An archive lists a deep tree one level at a time, and resolving every entry from the
        root would cost depth² calls; so the walk starts from the last parent resolved when
        `path` lies below it through plain directories. That is the same directory as long
        as nothing was removed or replaced since (`_removed`): making new entries cannot
        change where existing names lead.
        """
        if path.count("/") > MAX_DEPTH:  # as resolve_parent would refuse it
            raise OSError(errno.ENAMETOOLONG, "too many nested directories", path)
        head, _, base = path.rpartition("/")
        near = self._near
        if near is not None and near.below(head):
            fd = near.go(head, (0o755, self._uid or 0, self._gid or 0))
            if fd is not None:
                return os.dup(fd), base
        parent, base = resolve_parent(
            self._root, path, create=True, uid=self._uid or 0, gid=self._gid or 0,
            on_nondir=on_nondir,
        )
        if near is not None:
            near.place(head, os.dup(parent))
        return parent, base

    def _remove(self, parent: int, base: str) -> None:
        """`remove_entry`, forgetting the remembered parent if anything went."""
        if remove_entry(parent, base) and self._near is not None:
            self._near.forget()

    def _fail(self, name: str, problem: str) -> LayerError:
        return LayerError(f"{self._label}: entry {name!r}: {problem}")

    def _join(self, rel: str) -> str:
        return f"{self._dest}/{rel}" if self._dest else rel

    def _path_rule(self, name: str) -> NonDirRule | None:
        """What the path of entry `name` does with a non-directory on the way (rootpath's
        `on_nondir`): ADD follows symlinks (and fails on the rest); a layer: `_layer_path`."""
        return partial(self._layer_path, name) if self._as_layer else None

    def _layer_path(self, name: str, parent: int, base: str, target: str | None) -> bool:
        """Whether the non-directory `base` met on entry `name`'s path is hidden by a new
        directory (True) or, if a symlink, followed (False); see the class docstring."""
        st = os.lstat(base, dir_fd=parent)
        if is_whiteout(st):
            return False  # apply's whiteout of this layer: in the way (ENOTDIR), as always
        if (st.st_dev, st.st_ino) not in self._made:
            return True  # of the layers below: this layer's directory hides it
        if target is not None and any(p.startswith(".wh.") for p in target.split("/")):
            raise self._fail(name, f"its path goes through the symlink {base!r} -> {target!r}"
                                   " to a name starting with .wh., which OCI reserves for"
                                   " whiteouts")
        return False

    def _owner(self, h: Header) -> tuple[int, int]:
        return (
            h.uid if self._uid is None else self._uid,
            h.gid if self._gid is None else self._gid,
        )

    def _entry(self, reader: TarReader, h: Header, name: str) -> None:
        if "\0" in name:
            raise self._fail(name, "NUL byte in the name")
        rel = clean_name(name)
        if not rel:
            if h.type == DIRTYPE:
                return  # "./": the extraction directory itself, which exists already
            raise self._fail(name, "resolves to the extraction directory itself")
        parent, base = self._parent(self._join(rel), self._path_rule(name))
        try:
            if h.type == DIRTYPE:
                self._directory(parent, base)
                self._dirs[rel] = replace(h, name=b"")  # the name is the key: kept once
            elif h.type == LNKTYPE:
                self._hardlink(parent, base, h, name)
            else:
                self._remove(parent, base)
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
        self._remove(parent, base)
        os.mkdir(base, 0o700, dir_fd=parent)

    def _set_attributes(self, fd: int, h: Header) -> None:
        # chown first: it clears setuid/setgid and security.capability (chown(2), capabilities(7))
        os.fchown(fd, *self._owner(h))
        os.fchmod(fd, h.mode)
        for key, value in h.xattrs:
            if not is_overlay_xattr(key):  # overlay state is never data (docs/security.md rule 10)
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
        target_rel = clean_name(target)
        if not target_rel:
            raise self._fail(name, "hard link to the extraction directory itself")
        tparent, tbase = resolve_parent(self._root, self._join(target_rel),
                                        on_nondir=self._path_rule(name))
        try:
            try:
                tst = os.lstat(tbase, dir_fd=tparent)
            except FileNotFoundError:
                raise self._fail(name, f"hard link target {target!r} does not exist") from None
            if (tst.st_dev, tst.st_ino) not in self._made:
                # Only links to what this archive wrote: never to a file of the root it was
                # unpacked into, let alone outside it (docs/security.md family B).
                raise self._fail(name, f"hard link to {target!r}, which the archive did not create")
            try:
                cur = os.lstat(base, dir_fd=parent)
                if (cur.st_dev, cur.st_ino) == (tst.st_dev, tst.st_ino):
                    return  # already that file
            except FileNotFoundError:
                pass
            self._remove(parent, base)
            os.link(tbase, base, src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(tparent)

    def _finish_dirs(self) -> None:
        """Directory attributes, children before their parents, once nothing more is
        written into them. Reverse name order puts every dir after those below it and keeps
        neighbours close, so the cursor walks the tree about once, whatever its depth."""
        assert self._near is not None
        self._near.place("", os.dup(self._root))  # entries may have moved or removed it
        for rel in sorted(self._dirs, reverse=True):
            h = self._dirs[rel]
            path = self._join(rel)
            try:
                fd = self._near.go(path, None)
                if fd is not None:
                    self._set_attributes(fd, h)
                    continue
                try:  # a symlink on the way, or gone: resolve it from the root
                    fd = open_in_root(self._root, path, os.O_RDONLY | os.O_DIRECTORY,
                                      follow_last=False)
                except (FileNotFoundError, NotADirectoryError):
                    continue  # replaced by a later entry, which won
                try:
                    self._set_attributes(fd, h)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise LayerError(f"{self._label}: entry {rel!r}: {exc.strerror}") from exc


class _DirCursor:
    """One open directory inside a root, moved between paths by name and by `..`.

    Paths are clean and relative to the root ("" is the root). Moving down opens plain
    directories only (O_NOFOLLOW): a symlink or a missing dir stops it, and the caller
    resolves that path with `rootpath` instead. `..` from a dir entered by name is its
    parent, as nothing but this unpack writes into the root meanwhile.
    """

    def __init__(self, root_fd: int) -> None:
        self._fd = os.dup(root_fd)
        self._path: str | None = ""  # None: the fd is not known to be at any path

    def below(self, path: str) -> bool:
        """Whether `path` is the cursor's dir or under it."""
        here = self._path
        return here is not None and (not here or path == here or path.startswith(here + "/"))

    def place(self, path: str, fd: int) -> None:
        """Take `fd` (consumed), the directory `path` resolves to now."""
        os.close(self._fd)
        self._fd, self._path = fd, path

    def forget(self) -> None:
        """Something was removed: where a path leads may have changed."""
        self._path = None

    def go(self, path: str, create: tuple[int, int, int] | None) -> int | None:
        """The cursor's fd moved to `path` (still the cursor's), or None where the way is not
        plain directories. Missing dirs are made with `create` (mode, uid, gid) when given."""
        if self._path is None:
            return None
        common = _common_dir(self._path, path)
        for _ in range(_depth(self._path) - _depth(common)):
            self._step("..")
        self._path = common
        for name in path[len(common):].lstrip("/").split("/") if path != common else ():
            try:
                self._step(name)
            except FileNotFoundError:
                if create is None or not _make_dir(self._fd, name, *create):
                    return None
                self._step(name)
            except (NotADirectoryError, OSError):
                return None
            self._path = f"{self._path}/{name}" if self._path else name
        return self._fd

    def _step(self, name: str) -> None:
        fd = os.open(name, _DIR_FLAGS, dir_fd=self._fd)
        os.close(self._fd)
        self._fd = fd

    def close(self) -> None:
        os.close(self._fd)


def _depth(path: str) -> int:
    return path.count("/") + 1 if path else 0


def _common_dir(a: str, b: str) -> str:
    """The deepest directory both paths are in or at (binary search: paths may be long)."""
    for outer, inner in ((a, b), (b, a)):  # the usual case: one is the other's ancestor
        if not outer or inner == outer or inner.startswith(outer + "/"):
            return outer
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    if (low == len(a) or a[low] == "/") and (low == len(b) or b[low] == "/"):
        return a[:low]
    return a[: max(a.rfind("/", 0, low), 0)]


def _make_dir(parent: int, name: str, mode: int, uid: int, gid: int) -> bool:
    """mkdir as `rootpath` makes missing dirs; False if something else is there."""
    fd = make_dir(parent, name, mode, uid, gid)
    if fd is None:
        return False
    os.close(fd)
    return True


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


def remove_entry(parent: int, base: str) -> bool:
    """Remove whatever is at `base` in `parent` (a directory recursively, any depth,
    fd-relative, never following links); whether there was anything."""
    try:
        st = os.lstat(base, dir_fd=parent)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        remove_subtree(parent, base)
    else:
        os.unlink(base, dir_fd=parent)
    return True
