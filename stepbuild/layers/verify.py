"""Verify an unpacked layer dir against its layer tar: does the dir hold what the tar says?

A layer dir is used as it is as an overlay lower dir, and its files are copied into new,
correctly hashed layers; its bytes are trusted only as far as they match the blob its
diff_id names. `verify_layer_dir(diff, tar)` answers that, for `stepbuild check --deep`.

Why compare against the tar's entries, and not re-capture the dir or keep a manifest:
re-capturing the dir rarely reproduces an imported tar byte for byte (entry order, header
encoding, mtimes), and a manifest written at unpack time is one more file that can be
tampered with or lost. The blob is what the diff_id hashes, so it is the reference: the tar is
read once, in order, into the tree `apply.py` would make of it (an *expected* tree: no bytes
are written), and the dir is walked and compared with it.

The expected tree follows `apply.py`'s conversion exactly:
- `.wh.<name>` → an overlay whiteout (a 0/0 char device) at `<name>`; if the layer itself has a
  directory `<name>` (before or after), that directory is opaque instead; if it has a file
  `<name>`, nothing; `.wh..wh..opq` → the opaque xattr on its dir; AUFS `.wh..wh.*` skipped;
- duplicate entries: the last wins, a directory merges with a directory;
- hard links: the names of one inode, compared as groups (same inode on disk ⇔ same entry);
- names go through the layer's own symlinks as `rootpath` resolves them for apply (`a -> b`,
  then `a/f`, is `b/f`; absolute targets from the layer root, `..` never above it).

Compared per entry: type; for files their size and sha256, mode (with setuid/setgid/sticky),
owner, mtime (whole seconds: the capture writes whole seconds) and xattrs (overlay's own left
out); for symlinks the target, owner and mtime; for devices the device number; for dirs the
tar lists their attributes, and for every dir whether it is opaque. Extra entries in the dir
are problems, except what a *built* layer dir (a step's upper dir, renamed into the store)
legitimately holds beyond its tar: directories overlay only copied up (capture leaves them
out; not opaque), whiteouts inside an opaque dir (they hide nothing), sockets (tar cannot
carry them). Not compared: the layer root's attributes (apply sets them, overlay shows the
upper's), and the attributes of directories the tar does not list (apply takes them from the
layers below, which a layer alone does not determine).

The walk is depth-independent: one descriptor, down by name and up by `..` (as fs/trees.py),
never a path longer than one name. Nothing is followed or written.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stepbuild.errors import LayerError
from stepbuild.fs.rootpath import MAX_SYMLINKS
from stepbuild.layers.overlayfs import is_whiteout, kept_xattrs
from stepbuild.layers.tar import (
    BLKTYPE,
    CHRTYPE,
    DIRTYPE,
    END_OF_ARCHIVE,
    FIFOTYPE,
    LNKTYPE,
    SYMTYPE,
    Header,
    TarReader,
)
from stepbuild.layers.unpack import clean_name

if TYPE_CHECKING:
    from stepbuild.layers.tar import Readable

__all__ = ["verify_layer_dir"]

_CHUNK = 1 << 20
_NS = 1_000_000_000
_WHITEOUT_PREFIX = ".wh."
_OPAQUE_MARKER = ".wh..wh..opq"
_META_PREFIX = ".wh..wh."
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = {DIRTYPE: "dir", SYMTYPE: "symlink", CHRTYPE: "chr", BLKTYPE: "blk", FIFOTYPE: "fifo"}


@dataclass(eq=False, slots=True)
class _Expected:
    """One inode of the expected tree (hard links share the object)."""

    kind: str  # file, dir, symlink, chr, blk, fifo, whiteout
    header: Header | None = None  # None: a dir the tar needs but does not list, a whiteout
    sha256: str = ""
    opaque: bool = False


@dataclass(slots=True)
class _Seen:
    """What the walk met: names per inode (hard links) and every name."""

    names: set[str] = field(default_factory=set)
    inodes: dict[tuple[int, int], set[str]] = field(default_factory=dict)


def verify_layer_dir(diff: str, tar: Path | Readable, *, limit: int = 20) -> list[str]:
    """The differences between the layer dir `diff` and the layer tar `tar` (the verified
    blob: a path or a stream), one line each, at most `limit` (then a count); `[]` when they
    agree. An empty file is an empty layer, as for `apply.apply_layer`.

    Raises LayerError if the tar does not parse, OSError if the dir cannot be read.
    """
    if isinstance(tar, Path):
        if tar.stat().st_size == 0:
            return verify_layer_dir(diff, io.BytesIO(END_OF_ARCHIVE), limit=limit)
        with open(tar, "rb") as stream:
            return verify_layer_dir(diff, stream, limit=limit)
    expected = _expected_tree(TarReader(tar))
    problems: list[str] = []
    seen = _Seen()
    _walk(diff, expected, seen, problems)
    problems += [f"{rel}: missing" for rel in sorted(set(expected) - seen.names)]
    problems += _hard_link_problems(expected, seen)
    if len(problems) > limit:
        problems = [*problems[:limit], f"... and {len(problems) - limit} more differences"]
    return problems


# --- the expected tree --------------------------------------------------------------------


def _expected_tree(reader: TarReader) -> dict[str, _Expected]:
    """The tree `apply.apply_layer` makes of the tar, by relative name (the root left out)."""
    tree: dict[str, _Expected] = {}
    for h in reader:
        name = clean_name(os.fsdecode(h.name))
        if not name:
            continue  # the root: apply gives it fixed attributes
        last = name.rpartition("/")[2]
        if name.startswith(_META_PREFIX) and last != _OPAQUE_MARKER:
            continue  # AUFS metadata, skipped by apply
        if last == _OPAQUE_MARKER:
            opaque_dir = _resolved(tree, name.rpartition("/")[0])
            if opaque_dir:
                _parents(tree, opaque_dir)
                tree[opaque_dir].opaque = True
            continue
        parent = _resolved(tree, name.rpartition("/")[0])
        _parents(tree, parent)
        rel = f"{parent}/{last}" if parent else last
        if last.startswith(_WHITEOUT_PREFIX):
            _whiteout(tree, rel.removesuffix(last) + last[len(_WHITEOUT_PREFIX):])
        else:
            _entry(tree, reader, h, rel)
    return tree


def _resolved(tree: dict[str, _Expected], path: str) -> str:
    """The dir `path` of the layer with the layer's own symlinks on the way followed, as
    apply's `rootpath` resolves it inside the target: absolute targets from the layer root,
    `..` never above it. Raises LayerError for a symlink loop."""
    todo = [p for p in path.split("/") if p]
    out: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if out:
                out.pop()
            continue
        if part == ".":
            continue
        node = tree.get("/".join([*out, part]))
        if node is None or node.kind != "symlink" or node.header is None:
            out.append(part)
            continue
        hops += 1
        if hops > MAX_SYMLINKS:
            raise LayerError(f"{path}: too many levels of symbolic links")
        target = os.fsdecode(node.header.linkname)
        if target.startswith("/"):
            out = []
        todo[:0] = [p for p in target.split("/") if p]
    return "/".join(out)


def _parents(tree: dict[str, _Expected], parent: str) -> None:
    """The dirs an entry needs: made (unlisted) where the tar has none yet."""
    path = ""
    for part in parent.split("/") if parent else ():
        path = f"{path}/{part}" if path else part
        if path not in tree or tree[path].kind != "dir":
            _remove(tree, path)
            tree[path] = _Expected("dir")


def _whiteout(tree: dict[str, _Expected], hidden: str) -> None:
    node = tree.get(hidden)
    if node is None:
        tree[hidden] = _Expected("whiteout")
    elif node.kind == "dir":
        node.opaque = True  # the layer's own dir stays; what is below it is hidden


def _entry(tree: dict[str, _Expected], reader: TarReader, h: Header, rel: str) -> None:
    old = tree.get(rel)
    if h.type == DIRTYPE and old is not None and old.kind == "dir":
        old.header = h  # merged: the last entry's attributes win
        return
    _remove(tree, rel)
    if h.type == LNKTYPE:
        head, _, base = clean_name(os.fsdecode(h.linkname)).rpartition("/")
        target_dir = _resolved(tree, head)
        target = tree.get(f"{target_dir}/{base}" if target_dir else base)
        if target is None or target.kind != "file":
            raise LayerError(f"entry {rel!r}: hard link to something the layer does not hold")
        tree[rel] = target
        return
    # A directory replacing a whiteout hides what is below it (apply.py `_directory`).
    opaque = h.type == DIRTYPE and old is not None and old.kind == "whiteout"
    tree[rel] = _Expected(_KINDS.get(h.type, "file"), h, _data_hash(reader), opaque)


def _remove(tree: dict[str, _Expected], rel: str) -> None:
    """Drop `rel` and, if it is a dir, everything under it (a later entry replaces it)."""
    old = tree.pop(rel, None)
    if old is not None and old.kind == "dir":
        prefix = rel + "/"
        for name in [n for n in tree if n.startswith(prefix)]:
            del tree[name]


def _data_hash(reader: TarReader) -> str:
    sha = hashlib.sha256()
    while chunk := reader.read(_CHUNK):
        sha.update(chunk)
    return sha.hexdigest()


# --- the walk of the dir ------------------------------------------------------------------


def _walk(diff: str, expected: dict[str, _Expected], seen: _Seen, problems: list[str]) -> None:
    """Compare every entry under `diff` with `expected`, going down by name and up by `..`.

    The stack holds, per open level, its name, its subdirs still to visit and whether it
    is under an opaque dir (whiteouts there hide nothing)."""
    fd = os.open(diff, _DIR_FLAGS)
    stack: list[tuple[str, list[str], bool]] = [("", [], False)]
    try:
        stack[0][1].extend(_scan(fd, "", expected, seen, problems, under_opaque=False))
        while stack:
            rel, todo, under_opaque = stack[-1]
            if todo:
                child = todo.pop()
                child_rel = f"{rel}/{child}" if rel else child
                down = os.open(child, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = down
                opaque = under_opaque or _is_opaque(fd)
                subdirs = _scan(fd, child_rel, expected, seen, problems, under_opaque=opaque)
                stack.append((child_rel, subdirs, opaque))
                continue
            stack.pop()
            if stack:
                up = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = up
    finally:
        os.close(fd)


def _scan(fd: int, rel: str, expected: dict[str, _Expected], seen: _Seen,
          problems: list[str], *, under_opaque: bool) -> list[str]:
    """Compare the entries of dir `fd` (named `rel`); return the subdirs to go into."""
    subdirs = []
    for name in sorted(os.listdir(fd)):
        child = f"{rel}/{name}" if rel else name
        st = os.lstat(name, dir_fd=fd)
        node = expected.get(child)
        if node is None:
            if _tolerated(fd, name, st, under_opaque):
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append(name)
            else:
                problems.append(f"{child}: not in the layer's blob")
            continue
        seen.names.add(child)
        problems.extend(f"{child}: {p}" for p in _compare(fd, name, st, node))
        if stat.S_ISREG(st.st_mode):
            seen.inodes.setdefault((st.st_dev, st.st_ino), set()).add(child)
        if stat.S_ISDIR(st.st_mode) and node.kind == "dir":
            subdirs.append(name)
    return subdirs


def _tolerated(fd: int, name: str, st: os.stat_result, under_opaque: bool) -> bool:
    """An entry the tar does not list that a built layer dir may hold (module docstring)."""
    if stat.S_ISSOCK(st.st_mode):
        return True
    if is_whiteout(st):
        return under_opaque
    if stat.S_ISDIR(st.st_mode):
        sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
        try:
            return not _is_opaque(sub)
        finally:
            os.close(sub)
    return False


def _kind(st: os.stat_result) -> str:
    mode = st.st_mode
    if is_whiteout(st):
        return "whiteout"
    for test, kind in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISCHR, "chr"), (stat.S_ISBLK, "blk"), (stat.S_ISFIFO, "fifo")):
        if test(mode):
            return kind
    return "socket"


def _compare(fd: int, name: str, st: os.stat_result, node: _Expected) -> list[str]:
    """How the entry `name` of dir `fd` differs from the expected `node`."""
    kind = _kind(st)
    if kind != node.kind:
        return [f"is a {kind}, the blob has a {node.kind}"]
    problems = []
    if kind == "dir":
        opaque = _dir_opaque(fd, name)
        if opaque != node.opaque:
            problems.append("opaque" if opaque else "not opaque, the blob makes it opaque")
    h = node.header
    if h is None:
        return problems
    problems += _compare_attributes(st, h)
    if kind in ("file", "dir") and _xattrs(fd, name) != kept_xattrs(dict(h.xattrs)):
        problems.append("xattrs differ")
    if kind == "file" and (st.st_size != h.size or _file_hash(fd, name) != node.sha256):
        problems.append("content differs")
    elif kind == "symlink" and os.fsencode(os.readlink(name, dir_fd=fd)) != h.linkname:
        problems.append("link target differs")
    elif kind in ("chr", "blk") and st.st_rdev != os.makedev(h.devmajor, h.devminor):
        problems.append("device number differs")
    return problems


def _compare_attributes(st: os.stat_result, h: Header) -> list[str]:
    problems = []
    if (st.st_uid, st.st_gid) != (h.uid, h.gid):
        problems.append(f"owner {st.st_uid}:{st.st_gid}, the blob has {h.uid}:{h.gid}")
    if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) != h.mode & 0o7777:
        problems.append(f"mode {stat.S_IMODE(st.st_mode):04o}, the blob has {h.mode & 0o7777:04o}")
    if st.st_mtime_ns // _NS != h.mtime_ns // _NS:
        problems.append("mtime differs")
    return problems


def _xattrs(fd: int, name: str) -> tuple[tuple[str, bytes], ...]:
    """The xattrs a layer records (overlay's left out) of the file or dir `name` in `fd`."""
    entry = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    try:
        return kept_xattrs({key: os.getxattr(entry, key) for key in os.listxattr(entry)})
    finally:
        os.close(entry)


def _hard_link_problems(expected: dict[str, _Expected], seen: _Seen) -> list[str]:
    """Names that are one inode in the blob but not on disk, or the other way round."""
    inodes: dict[int, set[str]] = {}
    for rel, node in expected.items():
        if node.kind == "file":
            inodes.setdefault(id(node), set()).add(rel)
    wanted = {frozenset(names) for names in inodes.values() if len(names) > 1}
    found = {frozenset(names) for names in seen.inodes.values() if len(names) > 1}
    return [f"{', '.join(sorted(names))}: hard links differ from the blob"
            for names in sorted(wanted ^ found, key=sorted)]


def _file_hash(fd: int, name: str) -> str:
    file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    sha = hashlib.sha256()
    try:
        while chunk := os.read(file_fd, _CHUNK):
            sha.update(chunk)
    finally:
        os.close(file_fd)
    return sha.hexdigest()


def _dir_opaque(fd: int, name: str) -> bool:
    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
    try:
        return _is_opaque(sub)
    finally:
        os.close(sub)


def _is_opaque(fd: int) -> bool:
    """Whether the dir `fd` carries overlay's opaque xattr (either namespace)."""
    for key in _OPAQUE_XATTRS:
        try:
            if os.getxattr(fd, key) == b"y":
                return True
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise
    return False
