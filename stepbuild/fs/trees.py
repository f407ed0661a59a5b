"""Walking and deleting directory trees of any depth, without following symlinks.

`walk_tree` goes down by name and back up by `..` with one open descriptor, so a tree's depth
costs neither descriptors nor stack frames (Python 3.11's shutil.rmtree recurses once per
level and dies of RecursionError near 1,000). Going up by `..` is only right while nothing
renames directories in the tree: it is for trees that are ours alone (a layer dir being
applied, a store dir renamed into tmp/ before it is deleted, an export's own temp dir).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

__all__ = [
    "UNLIMITED",
    "TreeTooDeep",
    "move_dir_fd",
    "remove_subtree",
    "remove_tree",
    "sorted_subdirs",
    "walk_tree",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
UNLIMITED = 1 << 20  # a walk_tree limit no tree reaches: as deep as the tree goes

# on_file(dir_fd, name) and on_dir_done(parent_fd, name)
Visit = Callable[[int, str], None]


class TreeTooDeep(Exception):
    """`walk_tree` met a directory more levels down than its limit."""


def walk_tree(fd: int, limit: int, on_file: Visit | None = None,
              on_dir_done: Visit | None = None) -> None:
    """Depth-first over the directories under `fd` (consumed) with one open descriptor:
    `on_file(dir_fd, name)` for every non-directory, `on_dir_done(parent_fd, name)` after a
    directory's contents. Raises TreeTooDeep below `limit` levels."""
    stack: list[tuple[str, list[str]]] = [("", _scan(fd, on_file))]
    try:
        while stack:
            name, todo = stack[-1]
            if todo:
                child = todo.pop()
                if len(stack) > limit:
                    raise TreeTooDeep
                down = os.open(child, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = down
                stack.append((child, _scan(fd, on_file)))
                continue
            stack.pop()
            if not stack:
                break
            up = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = up
            if on_dir_done is not None:
                on_dir_done(fd, name)
    finally:
        os.close(fd)


def move_dir_fd(fd: int, name: str | bytes) -> int:
    """The dir `name` of the open dir `fd` (`..`: its parent; never a symlink), opened; `fd`
    is closed once it is (still the caller's if the open fails). For iterative walks that
    keep one descriptor whatever the depth."""
    moved = os.open(name, _DIR_FLAGS, dir_fd=fd)
    os.close(fd)
    return moved


def sorted_subdirs(fd: int) -> list[str]:
    """The names of the real subdirectories (not symlinks) of dir `fd`, sorted, *last first*:
    a walk pops them off the end in order."""
    with os.scandir(fd) as entries:
        return sorted((e.name for e in entries if e.is_dir(follow_symlinks=False)), reverse=True)


def _scan(fd: int, on_file: Visit | None) -> list[str]:
    """The subdirectory names of `fd`; `on_file` called for everything else."""
    dirs = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                dirs.append(entry.name)
            elif on_file is not None:
                on_file(fd, entry.name)
    return dirs


def remove_tree(path: Path, *, best_effort: bool = False) -> None:
    """Delete `path`: a directory tree of any depth, or a file or symlink (never followed);
    nothing if it is gone. For trees no one else writes into (see the module docstring).

    A directory that refuses to let go of an entry (EACCES/EPERM: a step, or a non-root
    unpack, may leave read-only dirs) is made 0700 and asked once more. Raises the OSError
    that remains; with `best_effort` nothing is raised and what can be removed is (a leftover
    is garbage, not an error), stopping only at a directory that cannot be opened or read.
    """
    try:
        try:
            top = os.open(path, _DIR_FLAGS)
        except FileNotFoundError:
            return
        except NotADirectoryError:  # a file, or a symlink (O_NOFOLLOW with O_DIRECTORY)
            with suppress(FileNotFoundError):
                os.unlink(path)
            return
        walk_tree(top, UNLIMITED, on_file=_remover(os.unlink, best_effort),
                  on_dir_done=_remover(os.rmdir, best_effort))
        os.rmdir(path)
    except OSError:
        if not best_effort:
            raise


def remove_subtree(parent_fd: int, name: str) -> None:
    """Delete the directory `name` of the open dir `parent_fd` and all it holds, any depth,
    never following a symlink. For trees only we write to (see the module docstring)."""
    walk_tree(os.open(name, _DIR_FLAGS, dir_fd=parent_fd), UNLIMITED,
              on_file=_remover(os.unlink, False), on_dir_done=_remover(os.rmdir, False))
    os.rmdir(name, dir_fd=parent_fd)


def _remover(remove: Callable[..., None], best_effort: bool) -> Visit:
    """`remove(name, dir_fd=fd)`, once more after making a refusing directory writable."""

    def visit(fd: int, name: str) -> None:
        try:
            try:
                remove(name, dir_fd=fd)
            except PermissionError:
                os.fchmod(fd, 0o700)
                remove(name, dir_fd=fd)
        except OSError:
            if not best_effort:
                raise

    return visit
