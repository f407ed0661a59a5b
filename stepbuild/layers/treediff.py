"""A directory tree as a value, and what changed between two of them, as overlayfs would say.

This is how a step that ran without overlay (`--isolation=chroot`, where nothing can be
mounted) gets its layer: the step runs in a plain copy of its parent's tree, `snapshot` takes
the tree before and after, `diff` says what an overlay upper dir would hold had the step run
over a mount of the same layers, `upperdir.write_upper` makes that upper dir, and
`capture.capture` turns it into the layer tar as for any other step: the same change gives the
same layer bytes in either mode.

`snapshot(root, masked)` reads a plain tree of any depth (one descriptor going down by name and
up by `..`: the tree is ours alone once the step is over; never following a symlink) and
records every entry: its kind, mode, owner, mtime, size, xattrs (overlay's own left out, as a
layer drops them), a symlink's target, a device's number, a regular file's content hash
(xxh3-128: a step can only hide its own change by a collision, which it could make anyway),
and the inode number, ctime and link count that tell a touched inode from an untouched one.

`diff(before, after, opaque=...)` is pure. What overlay records, and so what `diff` says:

- a path that is new, or of another kind than before: `PUT` (a directory new or of another
  kind comes with everything below it, all new too);
- a non-directory whose content or metadata changed, or that was *touched*: another inode
  (removed and made again) or a new ctime (overlay copies a file up on any metadata write,
  even of the same value: `chmod 644` of a 0644 file, `chown` to its owner). A ctime changed
  only by removing another name of the file (its link count went down) is not a touch:
  overlay leaves the remaining name in the lower dir;
- a directory whose mode, owner, mtime or xattrs changed: `PUT` (capture keeps a copied-up
  directory only then; `capture._copied_up`);
- a directory replaced by another (another inode: `rm -rf d && mkdir d`): overlay makes a
  directory created over a whiteout opaque, so `OPAQUE` with everything now below it `PUT`
  when `opaque` is true; when the caller cannot write the opaque xattr (`trusted.*` needs
  CAP_SYS_ADMIN) the new directory is compared with the old one entry by entry instead,
  which gives the same tree from whiteouts rather than an opaque marker;
- a path gone whose parent is still the same directory: `WHITEOUT` (one for a whole removed
  subtree, at its top).

Directories on the way to a change that did not change themselves are the writer's business:
it makes them with their metadata after the step, and capture leaves out those identical to
the lower dir, as it leaves out the directories overlay only copied up.

Not the same as overlay, by design: a file with several names in the parent whose content a
step rewrites in place changes under every name here (as on any plain filesystem, and in
Docker's vfs driver), where overlay would copy only the written name up; and a file opened
for writing but not written (`: >> f`) is copied up by overlay, with no trace here.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import xxhash

from stepbuild.fs.trees import move_dir_fd
from stepbuild.layers.overlayfs import fd_path, kept_xattrs, read_xattrs

__all__ = ["Action", "Change", "Entry", "Pins", "Tree", "diff", "snapshot"]

_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
ROOT = b""  # the tree's root in a `Tree`: its attributes, never a change of its own


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a tree. `fmt` is its `stat.S_IFMT` kind; `digest` the content hash of a
    regular file; `target` a symlink's text; `ino`, `ctime_ns`, `nlink`: what tells whether
    the inode was touched (see the module docstring)."""

    fmt: int
    mode: int  # stat.S_IMODE: permission, setuid, setgid and sticky bits
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    rdev: int = 0
    target: bytes | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()
    digest: str | None = None
    ino: int = 0
    ctime_ns: int = 0
    nlink: int = 1

    @property
    def is_dir(self) -> bool:
        return self.fmt == stat.S_IFDIR

    def same_dir_attributes(self, other: Entry) -> bool:
        """What capture compares of a directory overlay copied up (mode, owner, mtime, xattrs)."""
        return (self.mode, self.uid, self.gid, self.mtime_ns, self.xattrs) == (
            other.mode, other.uid, other.gid, other.mtime_ns, other.xattrs)

    def same_content(self, other: Entry) -> bool:
        """Everything a layer records of a non-directory, its bytes included."""
        return (self.fmt, self.mode, self.uid, self.gid, self.mtime_ns, self.size, self.rdev,
                self.target, self.xattrs, self.digest) == (
            other.fmt, other.mode, other.uid, other.gid, other.mtime_ns, other.size,
            other.rdev, other.target, other.xattrs, other.digest)


Tree = Mapping[bytes, Entry]  # path relative to the root ("a/b", no leading slash) -> entry


class Action(Enum):
    PUT = "put"  # the after entry goes into the upper dir (a directory: made, with its attributes)
    OPAQUE = "opaque"  # a new directory that hides everything the lower dirs had there
    WHITEOUT = "whiteout"  # the path is gone


@dataclass(frozen=True, slots=True)
class Change:
    path: bytes
    action: Action


def components(path: bytes) -> list[bytes]:
    """The sort key that puts a directory right before what it holds ("a", "a/b", "a-b")."""
    return path.split(b"/")


def parent_of(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


# --- diff (pure) ------------------------------------------------------------------------------


def diff(before: Tree, after: Tree, *, opaque: bool = True) -> list[Change]:
    """What an overlay upper dir would hold after a step changed `before` into `after`, parents
    before their children (see the module docstring). The root (`ROOT`) is never a change."""
    changes: list[Change] = []
    fresh: set[bytes] = set()  # dirs new, retyped or replaced: all below them is new
    for path in sorted((p for p in after if p != ROOT), key=components):
        new, old = after[path], before.get(path)
        if parent_of(path) in fresh or old is None or old.fmt != new.fmt:
            changes.append(Change(path, Action.PUT))
            if new.is_dir:
                fresh.add(path)
        elif new.is_dir:
            if opaque and new.ino != old.ino:
                changes.append(Change(path, Action.OPAQUE))
                fresh.add(path)
            elif not new.same_dir_attributes(old):
                changes.append(Change(path, Action.PUT))
        elif _touched(old, new):
            changes.append(Change(path, Action.PUT))
    for path in before:
        if path != ROOT and path not in after and _still_there(parent_of(path), before, after,
                                                               fresh):
            changes.append(Change(path, Action.WHITEOUT))
    changes.sort(key=lambda change: components(change.path))
    return changes


def _touched(old: Entry, new: Entry) -> bool:
    if new.ino != old.ino or not new.same_content(old):
        return True
    # ctime moves on any metadata write; but also when another name of the inode is removed
    return new.ctime_ns != old.ctime_ns and new.nlink >= old.nlink


def _still_there(parent: bytes, before: Tree, after: Tree, fresh: set[bytes]) -> bool:
    """Whether `parent` is the same directory after the step (so a child gone from it needs a
    whiteout), rather than gone, retyped or replaced (then it covers its children itself)."""
    if parent == ROOT:
        return True
    new = after.get(parent)
    return new is not None and new.is_dir and before[parent].is_dir and parent not in fresh


def needed_dirs(changes: Iterable[Change]) -> list[bytes]:
    """Every directory the upper dir must hold for `changes`: each change's parents, and the
    directories put or made opaque; parents first."""
    dirs: set[bytes] = set()
    for change in changes:
        parent = parent_of(change.path)
        while parent != ROOT and parent not in dirs:
            dirs.add(parent)
            parent = parent_of(parent)
    return sorted(dirs, key=components)


# --- snapshot (reads a real tree) ---------------------------------------------------------------


def snapshot(root: Path, masked: frozenset[bytes] = frozenset(),
             pins: Pins | None = None) -> dict[bytes, Entry]:
    """Every entry under `root` (and `root` itself as `ROOT`), except the paths in `masked`
    and all below them. Any depth, one descriptor, nothing followed. `pins` keeps its
    directories open, as far as it has room (see `Pins`)."""
    tree: dict[bytes, Entry] = {}
    fd = os.open(root, _DIR_FLAGS)
    try:
        tree[ROOT] = _entry(fd, None, os.fstat(fd))
        stack: list[tuple[bytes, list[bytes]]] = [(ROOT, _scan(fd, ROOT, masked, tree))]
        while stack:
            rel, todo = stack[-1]
            if todo:
                name = todo.pop()
                fd = move_dir_fd(fd, name)
                if pins is not None:
                    pins.keep(fd)
                child = rel + b"/" + name if rel else name
                stack.append((child, _scan(fd, child, masked, tree)))
                continue
            stack.pop()
            if stack:
                fd = move_dir_fd(fd, b"..")
    finally:
        os.close(fd)
    return tree


class Pins:
    """Open descriptors on the directories of a snapshot, held while the step runs.

    An inode number is only worth comparing if it cannot be reused: `rm -rf d && mkdir d`
    on ext4 often gives the new `d` the old one's number at once. An inode someone holds
    open is not freed, so its number stays taken, and a directory made again gets another
    one. At most `room` directories are held (descriptors are a limited resource; a
    container's limit is usually 1M, a login shell's 1,024): beyond that a reused number
    makes a replaced directory look like the same one, and the diff records its new
    content entry by entry (the same tree, other layer bytes than overlay's opaque dir)."""

    def __init__(self, room: int) -> None:
        self.room = room
        self._fds: list[int] = []

    def keep(self, fd: int) -> None:
        if len(self._fds) < self.room:
            self._fds.append(os.dup(fd))

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> Pins:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _scan(fd: int, rel: bytes, masked: frozenset[bytes], tree: dict[bytes, Entry]
          ) -> list[bytes]:
    """Record the entries of dir `fd` (path `rel`); return its subdirs to walk, last first."""
    subdirs = []
    for name in sorted((os.fsencode(n) for n in os.listdir(fd)), reverse=True):
        path = rel + b"/" + name if rel else name
        if path in masked:
            continue
        st = os.lstat(name, dir_fd=fd)
        tree[path] = _entry(fd, name, st)
        if stat.S_ISDIR(st.st_mode):
            subdirs.append(name)
    return subdirs


def _entry(dir_fd: int, name: bytes | None, st: os.stat_result) -> Entry:
    """The entry `name` of dir `dir_fd` (None: the dir itself) whose lstat is `st`."""
    path = fd_path(dir_fd, name if name is not None else b".")
    fmt = stat.S_IFMT(st.st_mode)
    target = digest = None
    if fmt == stat.S_IFLNK and name is not None:
        target = os.readlink(name, dir_fd=dir_fd)
    elif fmt == stat.S_IFREG and name is not None:
        digest = _hash(dir_fd, name, st)
    return Entry(fmt, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns,
                 st.st_size if fmt == stat.S_IFREG else 0,
                 st.st_rdev if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0,
                 target, kept_xattrs(read_xattrs(path)), digest, st.st_ino, st.st_ctime_ns,
                 st.st_nlink)


def _hash(dir_fd: int, name: bytes, st: os.stat_result) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                 dir_fd=dir_fd)
    try:
        if os.fstat(fd).st_ino != st.st_ino:
            raise FileNotFoundError(f"{os.fsdecode(name)} was replaced while it was read")
        hasher = xxhash.xxh3_128()
        while chunk := os.read(fd, _CHUNK):
            hasher.update(chunk)
        return hasher.hexdigest()
    finally:
        os.close(fd)
