"""What a `RUN --mount=type=bind` of the build context shows: the selected context files,
copied once per build and selection into the build's scratch dir (owner 0:0, as BuildKit's
context transfer gives them; modes and mtimes kept; ignore files applied)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from stepbuild.errors import ContextChanged

if TYPE_CHECKING:
    from stepbuild.sources.context import BuildContext, ContextEntry, Selection


class ContextCopies:
    """The context copies of one build, made on first use and reused by every later step
    that binds the same selection (by digest).

    Owned by the build's executor, which passes its `context` and its `scratch_file`
    (a fresh path in the build's scratch dir, removed with it); stage threads share it.
    """

    def __init__(self, context: BuildContext, scratch_file: Callable[[str], Path]) -> None:
        self.context = context
        self.scratch_file = scratch_file
        self._copies: dict[str, Path] = {}  # selection digest -> its copy
        self._lock = threading.Lock()

    def copy_of(self, selection: Selection) -> Path:
        """The copy of the context files `selection` names."""
        digest = selection.digest()
        with self._lock:
            known = self._copies.get(digest)
            if known is not None and os.path.lexists(known):  # not gone with the scratch dir
                return known
            copy = self.scratch_file("bind-context")
            _copy_selection(self.context, selection, copy)
            self._copies[digest] = copy
            return copy


def _copy_selection(context: BuildContext, selection: Selection, dest: Path) -> None:
    group = selection.groups[0]
    if not group.is_dir:
        _copy_file(context, group.resolved, dest, group.entries[0])
        return
    dest.mkdir(mode=0o700)
    dirs: list[tuple[Path, int, int | None]] = [(dest, group.mode, None)]
    for entry in sorted(group.entries, key=lambda e: e.path):
        target = dest / entry.path
        source = entry.path if group.resolved == "." else f"{group.resolved}/{entry.path}"
        if entry.kind == "dir":
            target.mkdir(mode=0o700)
            dirs.append((target, entry.mode, entry.mtime_ns))
        elif entry.kind == "symlink":
            assert entry.link_target is not None  # every symlink entry has its target
            os.symlink(entry.link_target, target)
            os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
        else:
            _copy_file(context, source, target, entry)
    for path, mode, mtime in reversed(dirs):  # children first: they change their parent's
        os.chmod(path, mode)
        if mtime is not None:
            os.utime(path, ns=(mtime, mtime))


def _copy_file(context: BuildContext, source: str, target: Path, entry: ContextEntry) -> None:
    src = context.open_file(source)
    try:
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            digest = xxhash.xxh3_128()
            while chunk := os.read(src, 1 << 20):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            # The bytes bound must be the bytes the step's key was made of (issue 11, item
            # 8): a file replaced since it was hashed is the lifecycle's to prepare again.
            if digest.hexdigest() != entry.content_hash:
                raise ContextChanged(source)
            os.fchmod(fd, entry.mode)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)
    finally:
        os.close(src)
