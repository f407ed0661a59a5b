"""Apply an OCI layer tar: a layer changeset → an overlay-native layer dir (an overlay lower dir).

The layer dirs of the store are used directly as overlayfs lower dirs, so a layer that comes
from elsewhere (`stepbuild load`, FROM oci-archive:…) is unpacked into the form overlayfs reads
(Documentation/filesystems/overlayfs.rst), as containerd's overlay differ does
(archive.OverlayConvertWhiteout) — the inverse of `layer.capture`:

- `<dir>/.wh.<name>` (image-spec layer.md, "Whiteouts") → a 0/0 character device `<dir>/<name>`,
  overlay's whiteout. If this layer itself has an entry `<name>` (before or after the
  whiteout; a whiteout only hides what is *below* the layer), a non-directory already hides
  the lower one and the whiteout adds nothing; a directory becomes opaque (its lower content is
  deleted, its own content stays).
- `<dir>/.wh..wh..opq` → the `trusted.overlay.opaque=y` xattr on `<dir>` (made if missing;
  `user.overlay.opaque` when rootless, as the overlay is then mounted with `userxattr`).
- Any other `.wh..wh.*` name at the top (AUFS metadata such as `.wh..wh.plnk`) is skipped, as
  moby's ApplyLayer does.

Everything else is `unpack.unpack_archive`'s machinery (`Unpacker`, as a layer): every entry
resolved inside the target by `rootpath` (absolute symlinks and surplus `..` contained, not
refused; only the layer's own symlinks are ever met, the target starts empty), numeric
ids only, hard links only to files of this layer, device numbers range-checked, overlay xattrs
in the tar dropped, the last of duplicate entries wins, directory attributes set last.

Where a path crosses a symlink of the layers below (`lk/Xfile` over `lk -> /abs/path`), the
layer dir holds a real `lk/` (made as any missing parent), so overlay shows a directory
there; `flatten` gives the same tree (docs/architecture.md, "One tree in every view").
Resolving through the lower link instead would tie the layer dir to the layers below it,
while the store shares one dir per diff_id between every image with that layer.

Refused, with a LayerError naming the entry and the layer (docs/security.md rule 2: only what cannot
be contained or represented): a whiteout of `.`, `..` or of an empty name; a path component
(not the last) named `.wh.*` (the spec reserves the prefix: such a file cannot exist), also
when the layer's own symlink leads there (`b -> .wh.a`, then `b/a`); a whiteout or opaque
marker whose path goes through a symlink of the layer itself (`s -> d`, then `s/.wh.x`:
whiteouts name paths below, and where it lands would depend on the order of the entries,
which `flatten` does not follow); an opaque
marker at the layer root (overlayfs ignores opacity on a lower layer's root dir — checked on
this kernel — so the layer could not hide what is below it) or under a non-directory; a 0/0
character device entry (overlay would read it as a whiteout); NUL in names; directories
nested more than MAX_DEPTH (rootpath's, 16,384) deep, by name or through symlinks (every walk
of a layer dir is iterative and fd-relative: 10,000 levels work); anything `Unpacker`
refuses (ENAMETOOLONG, corrupt or truncated tars, oversized metadata headers, ...).
An empty file is an empty layer.

Directories the tar does not list but needs (a parent of an entry, of a whiteout, an opaque
dir without its own entry) take the mode, owner, mtime and xattrs of the same directory in the
lower layers, as overlay's copy-up would have made them (containerd's `mkparent` with
WithParents); without one they are 0755 root. Otherwise a layer omitting `tmp/` would turn a
lower `/tmp` (1777) into 0755, since overlay shows the upper dir's attributes.

What it must not do: decompress or verify digests (the caller verifies the tar first:
docs/security.md rule 4), import `tarfile`, look up names, follow a link out of the target, write
into the lowers (read only, with lstat on paths made of real directories: they are store dirs).
The target should be an empty dir under the store's tmp/; on error it is left half-written
for the caller to delete with `remove_tree` (any depth) — never renamed into the store.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from stepbuild.errors import LayerError
from stepbuild.fs.rootpath import MAX_DEPTH as ROOTPATH_MAX_DEPTH
from stepbuild.fs.rootpath import makedirs_in_root, resolve_parent
from stepbuild.fs.trees import TreeTooDeep, move_dir_fd, remove_tree, sorted_subdirs, walk_tree
from stepbuild.layers.overlayfs import (
    Hit,
    LowerWalk,
    is_whiteout,
    kept_xattrs,
    opaque_xattr,
    read_xattrs,
)
from stepbuild.layers.tar import CHRTYPE, DIRTYPE, Header, Readable, TarReader
from stepbuild.layers.unpack import Unpacker, clean_name  # ADD's unpacking machinery; see its docs

if TYPE_CHECKING:
    from stepbuild.fs.rootpath import NonDirRule

__all__ = ["MAX_DEPTH", "apply_layer", "commit_applied"]
_WHITEOUT_PREFIX = ".wh."
_OPAQUE_MARKER = ".wh..wh..opq"
_META_PREFIX = ".wh..wh."
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Directory levels a layer may have: what rootpath resolves. Every walk of ours is iterative
# and fd-relative (fs.trees), so depth costs neither stack frames nor descriptors.
MAX_DEPTH = ROOTPATH_MAX_DEPTH


def apply_layer(
    tar: Path | Readable, target: Path, *, lowers: Sequence[Path] = (), label: str = "layer"
) -> None:
    """Unpack the uncompressed layer tar `tar` (a path or a stream) into the dir `target`.

    `lowers` are the layer dirs below this one, top first (overlay-native, as this function
    writes them); they only lend their attributes to directories the tar needs but does not
    list. `label` names the layer in errors ("layer sha256:…"). The target's own attributes
    become 0755 root:root (a "./" entry is ignored: overlay shows the upper dir's root).
    Raises LayerError; see the module docstring for what is converted, contained and refused.
    """
    root_fd = os.open(target, _DIR_FLAGS)
    try:
        os.fchown(root_fd, 0, 0)
        os.fchmod(root_fd, 0o755)
        applier = _Applier(root_fd, label)
        if isinstance(tar, Path) and tar.stat().st_size == 0:
            return  # an empty file is an empty layer (Go's archive/tar reads it as one)
        try:
            if isinstance(tar, Path):
                with open(tar, "rb") as stream:
                    applier.run(TarReader(stream))
            else:
                applier.run(TarReader(tar))
        except LayerError as exc:  # the reader's format errors do not know the layer
            if exc.message.startswith(f"{label}: "):
                raise
            raise LayerError(f"{label}: {exc.message}", hint=exc.hint) from exc
        try:
            if _deeper_than(root_fd, MAX_DEPTH):  # deep through symlinks in the layer
                raise LayerError(f"{label}: directories nested more than {MAX_DEPTH} deep")
            applier.inherit_dirs([os.fsencode(p) for p in lowers])
        except OSError as exc:
            raise LayerError(f"{label}: {exc.strerror or exc}: {exc.filename}") from exc
    finally:
        os.close(root_fd)


class LayerCommitter(Protocol):
    """What `commit_applied` needs of the store (`store.Store` is one; layers/ is below
    store/ and names only the methods it calls)."""

    def tmp_dir(self, prefix: str) -> Path: ...

    def commit_layer(self, upper: Path, diff_id: str, tar_path: Path) -> Path: ...


def commit_applied(store: LayerCommitter, tar: Path, diff_id: str, lowers: Sequence[Path],
                   label: str, prefix: str) -> None:
    """Apply the layer tar `tar` (its diff_id already verified) on `lowers` into a new dir
    under the store's tmp/ (named `prefix`…) and commit it as layer `diff_id` with `tar` as
    its blob: both are consumed. On error the half-applied dir is removed; `tar` stays the
    caller's."""
    target = store.tmp_dir(prefix)
    try:
        apply_layer(tar, target, lowers=lowers, label=label)
        store.commit_layer(target, diff_id, tar)
    except BaseException:
        remove_tree(target, best_effort=True)  # any depth (shutil.rmtree is recursive)
        raise


def _deeper_than(root_fd: int, limit: int) -> bool:
    """Whether the tree under `root_fd` has directories more than `limit` levels down."""
    try:
        walk_tree(os.dup(root_fd), limit)
    except TreeTooDeep:
        return True
    return False


class _Applier(Unpacker):
    """`Unpacker` into the layer root, with OCI whiteouts turned into overlay ones."""

    def __init__(self, root_fd: int, label: str) -> None:
        super().__init__(root_fd, "", None, None, label, as_layer=True)
        self._explicit: set[tuple[int, int]] = set()  # (st_dev, st_ino) of listed dirs

    def _entry(self, reader: TarReader, h: Header, name: str) -> None:
        if "\0" in name:
            raise self._fail(name, "NUL byte in the name")
        rel = clean_name(name)
        # String methods, not a loop over the parts: a deep tree's names are long and many.
        if rel.count("/") >= MAX_DEPTH:
            raise self._fail(name, f"nested more than {MAX_DEPTH} directories deep")
        head, _, last = rel.rpartition("/")
        if rel.startswith(_META_PREFIX) and last != _OPAQUE_MARKER:
            return  # AUFS metadata (.wh..wh.plnk/…, .wh..wh.aufs): not content
        if f"/{head}".find(f"/{_WHITEOUT_PREFIX}") >= 0:
            raise self._fail(name, "a directory named .wh.* (the prefix marks whiteouts; "
                                   "no file of an OCI layer can have such a name)")
        if last == _OPAQUE_MARKER:
            self._opaque(head, name)
        elif last.startswith(_WHITEOUT_PREFIX):
            self._whiteout(rel, last[len(_WHITEOUT_PREFIX):], name)
        elif h.type == CHRTYPE and h.devmajor == 0 and h.devminor == 0:
            raise self._fail(name, "a 0/0 character device is an overlay whiteout; OCI layers "
                                   "express whiteouts as .wh.<name> entries")
        else:
            super()._entry(reader, h, name)

    def _whiteout(self, rel: str, hidden: str, name: str) -> None:
        if hidden in ("", ".", ".."):
            raise self._fail(name, f"whiteout of {hidden or 'an empty name'!r}")
        head = rel.rpartition("/")[0]
        parent, base = resolve_parent(self._root, f"{head}/{hidden}" if head else hidden,
                                      create=True, on_nondir=self._marker_path(name))
        try:
            try:
                st = os.lstat(base, dir_fd=parent)
            except FileNotFoundError:
                os.mknod(base, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)
                return
            if stat.S_ISDIR(st.st_mode):
                _set_opaque(parent, base)  # this layer's dir stays; the lower one is hidden
        finally:
            os.close(parent)

    def _opaque(self, dir_rel: str, name: str) -> None:
        if not dir_rel:
            raise self._fail(name, "opaque marker at the layer root: overlayfs ignores "
                                   "opacity on a layer's root dir, so it cannot be applied")
        fd = makedirs_in_root(self._root, dir_rel, on_nondir=self._marker_path(name))
        try:
            st, root = os.fstat(fd), os.fstat(self._root)
            if (st.st_dev, st.st_ino) == (root.st_dev, root.st_ino):
                raise self._fail(name, "opaque marker resolves to the layer root")
            os.setxattr(fd, opaque_xattr(), b"y")
        finally:
            os.close(fd)

    def _marker_path(self, name: str) -> NonDirRule:
        """The walk of whiteout `name`'s path: it may not go through a symlink (only this
        layer's are here). A whiteout names a path of the layers below; through the layer's
        own link, where it lands would depend on whether the link comes first in the tar,
        and `flatten`, which applies a layer's whiteouts before its entries, would land it
        elsewhere than this layer dir does."""

        def no_symlink(_parent: int, link: str, target: str | None) -> bool:
            if target is not None:
                raise self._fail(name, f"a whiteout through the symlink {link!r} of its own "
                                       "layer (whiteouts name paths of the layers below)")
            return False  # anything else: not a directory, as without a rule

        return no_symlink

    def _directory(self, parent: int, base: str) -> None:
        try:
            replaces_whiteout = is_whiteout(os.lstat(base, dir_fd=parent))
        except FileNotFoundError:
            replaces_whiteout = False
        super()._directory(parent, base)
        if replaces_whiteout:
            _set_opaque(parent, base)

    def _hardlink(self, parent: int, base: str, h: Header, name: str) -> None:
        try:
            super()._hardlink(parent, base, h, name)
        except (FileNotFoundError, NotADirectoryError):
            # the way to the target is not in this layer: a link out, or to a lower layer
            raise self._fail(name, f"hard link to {os.fsdecode(h.linkname)!r}, which is "
                                   "not a file of this layer") from None

    def _set_attributes(self, fd: int, h: Header) -> None:
        super()._set_attributes(fd, h)
        if h.type == DIRTYPE:
            st = os.fstat(fd)
            self._explicit.add((st.st_dev, st.st_ino))

    def inherit_dirs(self, lowers: list[bytes]) -> None:
        """Give each directory the tar did not list the attributes of the directory it
        covers in `lowers` (top first), found as overlay's lookup would find it.

        Any depth: one fd on the layer dir, down by name and up by `..` (the layer dir is
        ours alone), and one per lower dir (`LowerWalk`)."""
        if not lowers:
            return
        walk = LowerWalk(lowers)
        fd = os.dup(self._root)
        try:
            stack = [(sorted_subdirs(fd), walk.all())]  # (names left, last first; lowers below)
            while stack:
                todo, below = stack[-1]
                if not todo:
                    stack.pop()
                    if stack:
                        fd = move_dir_fd(fd, "..")
                        walk.up(below)
                    continue
                name = todo.pop()
                hit, lower_dirs = walk.look(below, os.fsencode(name))
                if self._inherit(fd, name, hit) and lower_dirs:
                    fd = move_dir_fd(fd, name)
                    walk.down(lower_dirs, os.fsencode(name))
                    stack.append((sorted_subdirs(fd), lower_dirs))
        finally:
            os.close(fd)
            walk.close()

    def _inherit(self, dir_fd: int, name: str, hit: Hit | None) -> bool:
        """Copy the lower dir's attributes to dir `name` unless the tar listed it; whether
        the lookup goes on below it (it is not opaque)."""
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) not in self._explicit and hit is not None \
                    and stat.S_ISDIR(hit[1].st_mode):
                _copy_dir_attributes(fd, hit[0], hit[1])
            return not _has_opaque(fd)
        finally:
            os.close(fd)


def _set_opaque(parent: int, base: str) -> None:
    fd = os.open(base, _DIR_FLAGS, dir_fd=parent)
    try:
        os.setxattr(fd, opaque_xattr(), b"y")
    finally:
        os.close(fd)


def _has_opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, opaque_xattr()) == b"y"
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return False
        raise


def _copy_dir_attributes(fd: int, lower: bytes, st: os.stat_result) -> None:
    """What overlay's copy-up keeps of a directory: owner, mode, xattrs (not overlay's),
    mtime (overlayfs.rst, "Non-directories"; fs/overlayfs/copy_up.c)."""
    os.fchown(fd, st.st_uid, st.st_gid)  # first: chown clears setgid
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    for key, value in kept_xattrs(read_xattrs(lower)):  # overlay's own xattrs left out
        os.setxattr(fd, key, value)
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
