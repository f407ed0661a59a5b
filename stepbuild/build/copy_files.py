"""COPY and ADD file operations: put selected context files into an image root, Docker's way.

Destination rules (Dockerfile reference, COPY): a relative destination is relative to WORKDIR
(the caller joins it); with several sources, or a wildcard that matched several, the
destination must be a directory ending in "/"; a source directory is copied by its contents;
a source file goes to `dest/<name>` when dest ends in "/" or is an existing directory, else to
`dest` itself; missing parent directories are created. Files keep their mode (unless --chmod),
mtime, symlinks, hard links (within one COPY) and xattrs.

Owners (BuildKit: fsutil copy's `copyFileInfo`, its `testCopyChownExistingDir`): --chown sets
every entry's owner. Without it, build context files become 0:0 (Docker resets them) while a
`COPY --from` keeps each entry's uid/gid as it is in the stage or image (`Placement.owner` is
None); the directories the COPY makes on the way to its destination, and the destination
directory itself, are made "as root": 0:0 unless --chown.

--chmod (`modes.py`, BuildKit's `testCopyChmod`) sets the mode of every copied entry (not of
symlinks) and of the directories made on the way: the octal mode's permission bits, or 0755
for a symbolic mode. A directory that exists is left as it is when it is the destination or on
the way to it; one met inside a copied tree takes the source's metadata.

Every path inside the image root is resolved *inside* it (`rootpath`), so a symlink in the
image (`/app -> /srv`) is followed within the root and never out to the host. The root is a
mounted overlay: writes land in the step's upper dir.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from stepbuild.errors import BuildError
from stepbuild.fs import rootpath
from stepbuild.fs.userns import in_user_namespace, unmapped_message

if TYPE_CHECKING:
    from stepbuild.fs.modes import Chmod

# xattrs worth keeping on copied files: user data and file capabilities. trusted.* and
# security.selinux belong to the host, not to the image.
KEPT_XATTR_PREFIXES = ("user.", "security.capability")
_COPY_CHUNK = 1 << 20


class CopyError(BuildError):
    """A COPY/ADD cannot be done as asked (bad destination, missing source...)."""


@dataclass(frozen=True, slots=True)
class Owner:
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True, slots=True)
class Placement:
    """Where things go: the destination as written (absolute), the owner and --chmod.
    `owner` None keeps each source entry's own uid/gid (`COPY --from` without --chown)."""

    dest: str
    owner: Owner | None = Owner()
    chmod: Chmod | None = None

    @property
    def made_owner(self) -> Owner:
        """The owner of a directory made on the way to the destination: --chown, else root."""
        return self.owner or Owner()

    @property
    def made_mode(self) -> int:
        """The mode of a directory made on the way to the destination."""
        return self.chmod.created_dir_mode if self.chmod else 0o755

    def owner_of(self, source: os.stat_result) -> Owner:
        """The owner a copied entry gets: --chown's, 0:0 for the build context, else its own."""
        return self.owner or Owner(source.st_uid, source.st_gid)

    def mode_of(self, mode: int, is_dir: bool) -> int:
        """The permission bits a copied entry with source mode `mode` gets."""
        return self.chmod.apply(mode, is_dir) if self.chmod else stat.S_IMODE(mode)

    @property
    def dest_is_dir(self) -> bool:
        return self.dest.endswith("/") or self.dest.endswith("/.")


@contextmanager
def open_root(root: Path) -> Iterator[int]:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def _reporting(path: str) -> Iterator[None]:
    """Turn what the file system refuses into a CopyError naming the destination.

    rootpath and the syscalls raise OSError (a component that is a file, a symlink loop, no
    space left...) or ValueError (a path that names no entry); the user should see which
    destination failed and why, not a traceback.
    """
    try:
        yield
    except (OSError, ValueError) as exc:
        why = str(exc)
        if isinstance(exc, OSError) and exc.errno == errno.EINVAL and in_user_namespace():
            # a source entry's owner (COPY --from) that this rootless namespace cannot map
            raise CopyError(f"cannot copy to {path}: {unmapped_message('its owner')}") from None
        if isinstance(exc, OSError) and exc.strerror:
            why = exc.strerror
            if exc.strerror.endswith(" in"):  # rootpath's "'x' is not a directory in" <path>
                why += f" {exc.filename}"
        raise CopyError(f"cannot copy to {path}: {why}") from None


def is_directory(root_fd: int, path: str) -> bool:
    """Whether `path` (inside the root, symlinks followed within it) is a directory."""
    try:
        fd = rootpath.open_in_root(root_fd, path, os.O_RDONLY | os.O_DIRECTORY)
    except (OSError, ValueError):
        return False  # missing, not a directory, a symlink loop...: the write will say which
    os.close(fd)
    return True


def fresh_directory(root_fd: int, path: str) -> bool:
    """Whether nothing is at `path` inside the root (nor, maybe, at its parents): a COPY that
    makes it may write below it directly (`Copier.write_below_directly`)."""
    if not path.strip("/"):
        return False
    try:
        parent, name = rootpath.resolve_parent(root_fd, path)
    except FileNotFoundError:
        return True  # a parent is missing too
    except (OSError, ValueError):
        return False
    try:
        os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    finally:
        os.close(parent)
    return False


def upper_directory(root_fd: int, path: str, merged: Path, upper: Path) -> int | None:
    """An fd of the directory `path` (inside the mounted overlay `merged`) in the overlay's
    upper dir `upper`, if it is there and empty; else None."""
    try:
        fd = rootpath.open_in_root(root_fd, path, os.O_RDONLY | os.O_DIRECTORY)
    except (OSError, ValueError):
        return None
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")  # symlinks on the way resolved
    finally:
        os.close(fd)
    prefix = str(merged).rstrip("/") + "/"
    if not real.startswith(prefix):
        return None
    try:
        with open_root(upper) as upper_root:
            found = rootpath.open_in_root(upper_root, real[len(prefix):],
                                          os.O_RDONLY | os.O_DIRECTORY, follow_last=False)
    except (OSError, ValueError):
        return None
    if os.listdir(found):
        os.close(found)
        return None
    return found


def check_destination(place: Placement, sources: int, root_fd: int) -> None:
    """Several sources need a directory destination written with a trailing slash."""
    if sources > 1 and not place.dest_is_dir and not is_directory(root_fd, place.dest):
        raise CopyError(
            "when using COPY with more than one source file, the destination must be a"
            " directory and end with a /", hint=f"write the destination as {place.dest}/")


def file_target(place: Placement, name: str, root_fd: int) -> str:
    """Where a single source file named `name` lands."""
    if place.dest_is_dir or is_directory(root_fd, place.dest):
        return place.dest.rstrip("/").removesuffix("/.") + "/" + name
    return place.dest


class Copier:
    """Writes files into one image root; remembers hard links across one COPY."""

    def __init__(self, root_fd: int, place: Placement) -> None:
        self.root_fd = root_fd
        self.place = place
        self._links: dict[tuple[int, int], tuple[str, str | None]] = {}  # -> (path, hash)
        self._parents: dict[str, int] = {}
        self._dirs: list[tuple[str, os.stat_result | None, int, Owner]] = []
        self._direct: tuple[str, int] | None = None  # (dir, fd of it in the upper dir)

    def write_below_directly(self, path: str, upper_fd: int) -> None:
        """Everything below the directory `path` goes straight to `upper_fd`, the same
        directory in the overlay's upper dir, instead of through the overlay.

        Only for a directory this COPY has just created through the overlay where nothing
        was (`fresh_directory`): nothing below it exists in any lower layer, so writing the
        upper dir directly is what the overlay would do, without its per-file cost (creating
        a file through overlayfs costs several times a plain create). Nothing below `path` is
        then ever looked up through the overlay: every path below it resolves from `upper_fd`
        (`_resolve`). The Copier owns `upper_fd` (closed by `close`).
        """
        below = path.rstrip("/") + "/"
        for head in [h for h in self._parents if (h + "/").startswith(below)]:
            os.close(self._parents.pop(head))  # resolved through the overlay: not below
        self._direct = (below, upper_fd)

    def _resolve(self, path: str) -> tuple[int, str]:
        """(root fd, path relative to it) for `path`: the upper dir below a direct dir."""
        if self._direct is not None and path.startswith(self._direct[0]):
            return self._direct[1], path[len(self._direct[0]):]
        return self.root_fd, path

    def make_dir(self, path: str, source: os.stat_result | None = None, *,
                 top: bool = False) -> None:
        """Create a directory (and parents); its metadata is set by `finish`.

        A directory of a copied tree gets the owner (`Placement.owner_of`), mode
        (`Placement.mode_of`) and mtime of its `source`. An existing one is left as it is
        when it is the destination of the COPY itself (`top`, or no `source`: `COPY etc/
        /etc/` must not chmod or chown /etc); an existing directory met inside a copied tree
        takes the source's metadata, like any other copied entry (BuildKit: fsutil copy's
        `overwriteTargetMetadata`). The destination made here is made like the directories
        on the way to it (BuildKit's `MkdirAll`): owned by root or --chown and with the
        --chmod directory mode, but without --chmod it keeps the source's mode and, always,
        its mtime.
        """
        with _reporting(path):
            if not path.strip("/"):
                return  # the root itself (`COPY dir/ /`): it exists, and it is never re-owned
            parent, name = self._parent(path)
            created = False
            try:
                if name:
                    try:
                        os.mkdir(name, 0o755, dir_fd=parent)
                        created = True
                    except FileExistsError:
                        self._require_dir(parent, name, path)
            finally:
                os.close(parent)
            if not created and (top or source is None):
                return
            place = self.place
            if source is None:
                self._dirs.append((path, None, place.made_mode, place.made_owner))
            elif top:
                mode = place.made_mode if place.chmod else stat.S_IMODE(source.st_mode)
                self._dirs.append((path, source, mode, place.made_owner))
            else:
                self._dirs.append((path, source, place.mode_of(source.st_mode, True),
                                   place.owner_of(source)))

    def copy_file(self, source_fd: int, path: str, source: os.stat_result, *,
                  hashed: bool = False) -> str | None:
        """Copy an open regular file's bytes and metadata to `path`.

        `hashed`: copy through memory and return the xxh3-128 hex of the bytes copied (to
        the end of the file, however long it has become), so the caller can check they are
        the bytes its cache key was made of; a hard link to a file copied before returns
        that copy's hash. Otherwise the kernel copies (sendfile) and None is returned.
        """
        with _reporting(path):
            key = (source.st_dev, source.st_ino)
            if source.st_nlink > 1 and key in self._links:
                first, digest = self._links[key]
                self._hard_link(first, path)
                return digest
            digest = None
            parent, name = self._parent(path)
            try:
                _remove_non_dir(parent, name, path)
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=parent)
                try:
                    if hashed:
                        digest = copy_hashing(source_fd, fd, source.st_size)
                    else:
                        _copy_bytes(source_fd, fd, source.st_size)
                    self._set_metadata(source_fd, fd, source)
                finally:
                    os.close(fd)
            finally:
                os.close(parent)
            if source.st_nlink > 1:
                self._links[key] = (path, digest)
            return digest

    def write_file(self, path: str, data: bytes, mode: int, mtime_ns: int) -> None:
        """Create a file with the given content (heredoc sources, downloaded URLs)."""
        with _reporting(path):
            parent, name = self._parent(path)
            try:
                _remove_non_dir(parent, name, path)
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=parent)
                try:
                    view = memoryview(data)
                    while view:  # os.write may write less than asked
                        view = view[os.write(fd, view):]
                    owner = self.place.made_owner  # no source entry to keep an owner of
                    os.fchown(fd, owner.uid, owner.gid)
                    os.fchmod(fd, self.place.mode_of(mode, False))
                    os.utime(fd, ns=(mtime_ns, mtime_ns))
                finally:
                    os.close(fd)
            finally:
                os.close(parent)

    def copy_symlink(self, target: str, path: str, source: os.stat_result) -> None:
        with _reporting(path):
            parent, name = self._parent(path)
            try:
                _remove_non_dir(parent, name, path)
                os.symlink(target, name, dir_fd=parent)
                owner = self.place.owner_of(source)
                os.chown(name, owner.uid, owner.gid, dir_fd=parent, follow_symlinks=False)
                os.utime(name, ns=(source.st_mtime_ns, source.st_mtime_ns), dir_fd=parent,
                         follow_symlinks=False)
            finally:
                os.close(parent)

    def finish(self) -> None:
        """Set directory owners, modes and mtimes, deepest first (children change mtimes)."""
        for path, source, mode, owner in sorted(self._dirs,
                                                key=lambda item: -item[0].count("/")):
            with _reporting(path):
                fd = rootpath.open_in_root(*self._resolve(path), os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fchown(fd, owner.uid, owner.gid)
                    os.fchmod(fd, mode)
                    if source is not None:
                        os.utime(fd, ns=(source.st_mtime_ns, source.st_mtime_ns))
                finally:
                    os.close(fd)

    def _parent(self, path: str) -> tuple[int, str]:
        """(a dup of) the fd of `path`'s parent dir, made if missing, and the final name.

        Parents are resolved inside the root once per directory and kept open for the COPY:
        a 2,000-file COPY otherwise walks the root 2,000 times (~10 opens each).
        """
        head, _, name = path.rstrip("/").rpartition("/")
        cached = self._parents.get(head)
        if cached is None or not name:
            owner = self.place.made_owner
            fd, name = rootpath.resolve_parent(*self._resolve(path), create=True,
                                               mode=self.place.made_mode,
                                               uid=owner.uid, gid=owner.gid)
            if head in self._parents:
                return fd, name
            self._parents[head] = fd
            cached = fd
        return os.dup(cached), name

    def close(self) -> None:
        """Close the cached parent directories (always call it, also after an error)."""
        for fd in self._parents.values():
            os.close(fd)
        self._parents.clear()
        if self._direct is not None:
            os.close(self._direct[1])
            self._direct = None

    def _hard_link(self, first: str, path: str) -> None:
        first_parent, first_name = rootpath.resolve_parent(*self._resolve(first))
        try:
            parent, name = self._parent(path)
            try:
                _remove_non_dir(parent, name, path)
                os.link(first_name, name, src_dir_fd=first_parent, dst_dir_fd=parent,
                        follow_symlinks=False)
            finally:
                os.close(parent)
        finally:
            os.close(first_parent)

    def _set_metadata(self, source_fd: int, fd: int, source: os.stat_result) -> None:
        owner = self.place.owner_of(source)
        os.fchown(fd, owner.uid, owner.gid)
        os.fchmod(fd, self.place.mode_of(source.st_mode, False))  # after chown: it clears setuid
        # After chown too: chown (and any write) removes security.capability (the kernel's
        # killpriv), so file capabilities copied before it would be silently lost.
        _copy_xattrs(source_fd, fd)
        os.utime(fd, ns=(source.st_mtime_ns, source.st_mtime_ns))

    def _require_dir(self, parent: int, name: str, path: str) -> None:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode) and is_directory(*self._resolve(path)):
            return  # a symlink to a directory inside the root: followed, within the root
        if not stat.S_ISDIR(info.st_mode):
            raise CopyError(f"cannot copy a directory to {path}: it exists and is not a"
                            " directory")


def _remove_non_dir(parent: int, name: str, path: str) -> None:
    """Make room for a new file: remove an existing file or symlink, refuse a directory."""
    try:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        raise CopyError(f"cannot copy to {path}: it is an existing directory",
                        hint="end the destination with / to copy into it")
    os.unlink(name, dir_fd=parent)


def _copy_bytes(source_fd: int, target_fd: int, size: int) -> None:
    """Copy in the kernel with sendfile(2): it works between file systems (the context's and
    the overlay's), where copy_file_range(2) fails with EXDEV for every file."""
    offset = 0
    while offset < size:
        try:
            sent = os.sendfile(target_fd, source_fd, offset, min(size - offset, 1 << 30))
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            os.lseek(source_fd, offset, os.SEEK_SET)
            sent = _copy_by_reading(source_fd, target_fd)
        if sent == 0:
            break
        offset += sent


def copy_hashing(source_fd: int, target_fd: int, size: int) -> str:
    """Copy from the current offset to the end of the file (`size`: its size as last seen;
    it may have changed), hashing what is copied: one read of the source, as sendfile's,
    so a copy checked against its key costs no more reads than an unchecked one."""
    digest = xxhash.xxh3_128()
    # os.read, not a reused buffer: it allocates only what it reads, where a zeroed 1 MiB
    # buffer per file costs more than a small file's copy. Asking one byte more than the
    # size lets a short read tell the end of a small file without a read that returns b"".
    want = min(size + 1, _COPY_CHUNK)
    total = 0
    while True:
        chunk = os.read(source_fd, want)
        digest.update(chunk)
        total += len(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(target_fd, view):]
        # A short read past the size seen is the end (some file systems, FUSE ones, may read
        # short before it: then read on); an empty read always is.
        if not chunk or (len(chunk) < want and total >= size):
            return digest.hexdigest()
        want = _COPY_CHUNK


def _copy_by_reading(source_fd: int, target_fd: int) -> int:
    chunk = os.read(source_fd, _COPY_CHUNK)
    view = memoryview(chunk)
    while view:
        written = os.write(target_fd, view)
        view = view[written:]
    return len(chunk)


def _copy_xattrs(source_fd: int, target_fd: int) -> None:
    try:
        names = os.listxattr(source_fd)
    except OSError:
        return  # the context filesystem has no xattrs
    for name in names:
        if name.startswith(KEPT_XATTR_PREFIXES):
            os.setxattr(target_fd, name, os.getxattr(source_fd, name))
