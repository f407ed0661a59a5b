"""Resolve paths *inside* a root directory, as the kernel's openat2(RESOLVE_IN_ROOT) does.

This module owns one job: turning an attacker-controlled path (a tar entry, a COPY
destination, a WORKDIR, a symlink in an image) into a file descriptor inside a root directory
(a rootfs, a merged overlay view, a layer dir) without ever leaving it. Every path is walked
component by component with fd-relative `open(2)` calls and `O_NOFOLLOW`; a symlink met on the
way is read and its target spliced into the walk *within* the root: an absolute target starts
again at the root, and `..` never climbs above the root (the semantics of `RESOLVE_IN_ROOT` in
openat2(2), and of Go's `os.Root`). Never join a host path from strings and `open()` it:
docs/security.md rule 1; runc, moby and kaniko have each shipped that bug.

`..` is taken by opening `..` from the current directory and then checking that the directory
reached is the one the walk came through (same `st_dev`/`st_ino`); so only two descriptors are
ever open, and a directory renamed away mid-walk fails the walk instead of leaking out of the
root (openat2 returns EAGAIN in the same case).

A caller may give a walk an `on_nondir` rule (`NonDirRule`): it sees each non-directory met
where the walk needs a directory (a symlink, a file, ...) and may have it replaced by a new
directory instead of followed (or refused), or stop the walk by raising. The layer code uses
it for overlay's semantics, where a layer's directory hides a non-directory of the layers
below rather than writing through it (layers/unpack.py, `Unpacker`).

What it must not do: mount, chroot, chdir, change the umask, or use ctypes. It creates nothing
except the missing directories `resolve_parent(create=True)` is asked for, and the
directories an `on_nondir` rule asks for in place of a non-directory. Callers own (and close)
every descriptor returned to them.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "MAX_DEPTH",
    "MAX_SYMLINKS",
    "NonDirRule",
    "makedirs_in_root",
    "open_in_root",
    "read_file_in_root",
    "resolve_parent",
]

# The kernel's own limit on symlinks followed during one lookup (MAXSYMLINKS, fs/namei.c).
MAX_SYMLINKS = 40
# Directories deeper than this are refused (ENAMETOOLONG). The walk is fd by fd, so PATH_MAX
# (4096 bytes) does not limit it; trees 10,000 levels deep must work (issue 11), and the cap
# bounds the memory a hostile 8 MiB tar entry name could make a walk use.
MAX_DEPTH = 16384

# O_RDONLY (0) | O_DIRECTORY | O_NOFOLLOW: opening a symlink fails with ENOTDIR instead of
# following it, and we read the link ourselves. As root, read permission is never in the way.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# What a walk does with a non-directory where it needs a directory: called with the fd of the
# directory holding it, its name and its target if it is a symlink (else None); True replaces
# it by a new directory (made as a missing one would be), False follows a symlink (and fails
# on anything else, ENOTDIR); raising stops the walk.
NonDirRule = Callable[[int, str, str | None], bool]


class _Walker:
    """Where a walk is: one open directory fd, and the identities of the dirs above it.

    `_idents[i]` is (st_dev, st_ino) of the directory at depth i + 1; the root is depth 0 and
    is never closed (the caller owns `root_fd`).
    """

    def __init__(self, root_fd: int, path: str) -> None:
        self._root = root_fd
        self.path = path  # for error messages only
        self._fd = root_fd
        st = os.fstat(root_fd)
        self._root_ident = (st.st_dev, st.st_ino)
        self._idents: list[tuple[int, int]] = []
        self._links = 0

    @property
    def fd(self) -> int:
        return self._fd

    def _set(self, fd: int) -> None:
        if self._fd != self._root:
            os.close(self._fd)
        self._fd = fd

    def push(self, fd: int) -> None:
        """Step down into `fd`, a directory just opened relative to the current one."""
        if len(self._idents) >= MAX_DEPTH:
            os.close(fd)
            raise OSError(errno.ENAMETOOLONG, "too many nested directories", self.path)
        st = os.fstat(fd)
        self._idents.append((st.st_dev, st.st_ino))
        self._set(fd)

    def up(self) -> None:
        """`..`: the directory we came through, clamped at the root."""
        if not self._idents:
            return
        self._idents.pop()
        if not self._idents:
            self._set(self._root)
            return
        fd = os.open("..", _DIR_FLAGS, dir_fd=self._fd)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self._idents[-1]:
            os.close(fd)
            # openat2(RESOLVE_IN_ROOT) answers EAGAIN when a rename races the walk.
            raise OSError(errno.EAGAIN, "directory moved during path resolution", self.path)
        self._set(fd)

    def reset(self) -> None:
        """An absolute symlink target: start again at the root."""
        self._idents.clear()
        self._set(self._root)

    def follow(self, target: str) -> None:
        """Account for one symlink; an absolute target re-anchors the walk at the root."""
        self._links += 1
        if self._links > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, "too many levels of symbolic links", self.path)
        if not target:
            # Linux refuses to follow an empty symlink (ENOENT), so do we.
            raise FileNotFoundError(errno.ENOENT, "empty symlink", self.path)
        if target.startswith("/"):
            self.reset()

    def take(self) -> int:
        """Hand the current directory fd to the caller (a dup when it is the root)."""
        if self._fd == self._root:
            return os.dup(self._root)  # os.dup makes it non-inheritable (PEP 446)
        fd, self._fd = self._fd, self._root
        return fd

    def close(self) -> None:
        self._set(self._root)


def _check(path: str) -> None:
    if "\0" in path:
        raise ValueError(f"path contains a NUL byte: {path!r}")


def _readlink(dir_fd: int, name: str) -> str | None:
    """The target if `name` is a symlink; None if it is something else or does not exist."""
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):
            return None
        raise


def _split_last(path: str) -> tuple[str, str | None]:
    """Split off the last component; None when the path names the directory it starts in."""
    stripped = path.rstrip("/")
    if not stripped:
        return "", None
    head, _, last = stripped.rpartition("/")
    if not head and stripped.startswith("/"):
        head = "/"
    return head, last


def make_dir(parent: int, name: str, mode: int, uid: int, gid: int) -> int | None:
    """mkdir + open (an fd the caller closes); None if something appeared there first (the
    caller looks again)."""
    try:
        # Made 0700 first and opened up by fchmod after fchown: no moment with wrong
        # permissions, no umask involved, and chown cannot clear a setgid bit we asked for.
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        return None
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _enter(walk: _Walker, path: str, create: tuple[int, int, int] | None,
           on_nondir: NonDirRule | None = None) -> None:
    """Walk every component of `path` as a directory, following symlinks within the root.

    `create` is (mode, uid, gid) for missing directories, or None to fail on them. A
    non-directory `on_nondir` says to replace becomes a new directory (with `create`), or,
    without `create`, ends the walk with FileNotFoundError: nothing is below a directory not
    made yet.
    """
    if path.startswith("/"):
        walk.reset()
    todo = deque(path.split("/"))
    while todo:
        name = todo.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            walk.up()
            continue
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=walk.fd)
        except FileNotFoundError:
            made = None if create is None else make_dir(walk.fd, name, *create)
            if made is None:
                if create is None:
                    raise FileNotFoundError(
                        errno.ENOENT, f"no such directory {name!r} in", walk.path
                    ) from None
                todo.appendleft(name)  # lost a race with another creator: look again
                continue
            fd = made
        except NotADirectoryError:
            target = _readlink(walk.fd, name)
            if on_nondir is not None and on_nondir(walk.fd, name, target):
                fd = _replace(walk, name, create)
            elif target is None:
                raise NotADirectoryError(
                    errno.ENOTDIR, f"{name!r} is not a directory in", walk.path
                ) from None
            else:
                walk.follow(target)
                todo.extendleft(reversed(target.split("/")))
                continue
        walk.push(fd)


def _replace(walk: _Walker, name: str, create: tuple[int, int, int] | None) -> int:
    """Replace the non-directory `name` in the walk's directory by a new directory; return
    its fd."""
    if create is None:
        raise FileNotFoundError(errno.ENOENT, f"no such directory {name!r} in", walk.path)
    os.unlink(name, dir_fd=walk.fd)
    made = make_dir(walk.fd, name, *create)
    if made is None:  # only another writer in the same root could get here first
        raise FileExistsError(errno.EEXIST, f"{name!r} reappeared while replacing it in",
                              walk.path)
    return made


def resolve_parent(
    root_fd: int,
    path: str,
    *,
    create: bool = False,
    mode: int = 0o755,
    uid: int = 0,
    gid: int = 0,
    on_nondir: NonDirRule | None = None,
) -> tuple[int, str]:
    """Open the directory that holds `path` inside the root; return (fd, final name).

    Every component but the last is resolved within the root (symlinks followed, absolute
    ones re-anchored at the root, `..` clamped at it); the last one is returned as a name, not
    looked at, so the caller can create, replace or lstat it with `dir_fd=fd`. Trailing
    slashes are ignored. The caller closes `fd` (a dup of `root_fd` when the parent is the root).

    With `create=True` missing directories are made as `mkdir -p` would, each with exactly
    `mode` (no umask) and owner `uid`/`gid`; existing ones are left as they are. `on_nondir`
    (see `NonDirRule`) decides, for each non-directory on the way, whether it is replaced by
    such a directory (without `create`: FileNotFoundError instead) or followed if a symlink.

    Raises ValueError for a NUL in `path` or a final component that is empty, `.` or `..`
    (the path then names a directory, not an entry in one); FileNotFoundError or
    NotADirectoryError when a component is missing or not a directory; OSError ELOOP after
    MAX_SYMLINKS symlinks.
    """
    _check(path)
    head, last = _split_last(path)
    if last is None or last in (".", ".."):
        raise ValueError(f"path does not name an entry in a directory: {path!r}")
    walk = _Walker(root_fd, path)
    try:
        _enter(walk, head, (mode, uid, gid) if create else None, on_nondir)
        return walk.take(), last
    finally:
        walk.close()


def makedirs_in_root(
    root_fd: int, path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0,
    on_nondir: NonDirRule | None = None,
) -> int:
    """`mkdir -p path` inside the root; return an fd of the directory it resolves to.

    Symlinks on the way (the last component included) are followed within the root, and
    non-directories replaced by a new directory where `on_nondir` says so; missing
    directories are made with exactly `mode` and owner `uid`/`gid`, existing ones are left
    as they are. `/` or `` give a dup of `root_fd`. The caller closes the fd.
    """
    _check(path)
    walk = _Walker(root_fd, path)
    try:
        _enter(walk, path, (mode, uid, gid), on_nondir)
        return walk.take()
    finally:
        walk.close()


def open_in_root(
    root_fd: int, path: str, flags: int, mode: int = 0o644, *, follow_last: bool = True
) -> int:
    """`os.open(path, flags, mode)` with `path` resolved inside the root; returns a new fd.

    With `follow_last` a symlink in the last component is followed within the root too;
    without it the last component is opened with O_NOFOLLOW (so a symlink gives ELOOP, or the
    link itself with O_PATH). O_CLOEXEC is always added. A path naming a directory (`/`, `a/..`,
    `.`) opens that directory. A trailing slash adds O_DIRECTORY. The caller closes the fd.
    """
    _check(path)
    if path.endswith("/"):
        flags |= os.O_DIRECTORY
    walk = _Walker(root_fd, path)
    try:
        head, last = _split_last(path)
        while True:
            _enter(walk, head, None)
            if last is None or last in (".", ".."):
                if last == "..":
                    walk.up()
                return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=walk.fd)
            target = _readlink(walk.fd, last) if follow_last else None
            if target is None:
                return os.open(last, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=walk.fd)
            walk.follow(target)
            head, last = _split_last(target.lstrip("/"))
    except FileNotFoundError as exc:
        if exc.filename is None:
            exc.filename = path
        raise
    finally:
        walk.close()


def read_file_in_root(root: str | Path, path: str, limit: int = 1 << 20) -> bytes:
    """The contents of the regular file `path` inside the rootfs at `root` (e.g. /etc/passwd).

    Symlinks are followed within the root. Raises FileNotFoundError / NotADirectoryError as
    `open_in_root` does, and ValueError when the file is not a regular file (a FIFO is never
    waited on) or is larger than `limit` bytes: a truncated /etc/passwd would give wrong answers.
    """
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_in_root(root_fd, path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    finally:
        os.close(root_fd)
    with open(fd, "rb", buffering=0, closefd=True) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} in {root} is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} in {root} is larger than {limit} bytes")
    return data
