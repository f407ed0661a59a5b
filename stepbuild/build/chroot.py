"""A step's workspace under `--isolation=chroot`: a plain copy of the parent's tree instead of
an overlay, and the layer from what changed in it.

Where nothing can be mounted, `Executor.perform` (execute.py) does, for a step that missed
the cache:

    root = copy_parent(space, hollow=...)      # tmp/root: the parent's layers, merged
    ... put RUN's /etc files and stubs in place (run.furnish_chroot) ...
    with recording(space, root, masked):       # snapshots before and after; then tmp/upper,
        ... RUN chrooted in root, or COPY/ADD/WORKDIR writing into root ...  # as overlay's

after which capture and commit are those of every step: `tmp/upper` is an overlay upper dir
(whiteouts, opaque dirs) and becomes the layer dir, so the same change makes the same layer
in either mode (`layers/treediff.py` says how, and where it differs). The copy costs a full
read and write of the image per step, and each snapshot a read: chroot mode is the fallback
for where nothing better can run, not a fast path.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from stepbuild.layers.merged import copy_merged
from stepbuild.layers.treediff import Pins, diff, snapshot
from stepbuild.layers.upperdir import opaque_supported, write_upper

if TYPE_CHECKING:
    from pathlib import Path

    from stepbuild.build.step import Workspace

# Where the namespaced sandbox mounts /proc, a tmpfs /dev and /sys: a step never sees the
# image's content there, nor leaves its own in the layer. Copied empty, left out of the diff.
HOLLOW = frozenset({b"proc", b"dev", b"sys"})


def copy_parent(space: Workspace, *, hollow: frozenset[bytes] = frozenset()) -> Path:
    """The step's root, `space.tmp/root`: a copy of what an overlay of `space.lowers` shows
    (directories in `hollow` copied empty). Removed with the workspace."""
    root = space.tmp / "root"
    root.mkdir(mode=0o700)
    copy_merged(space.lowers, root, hollow)
    return root


def make_dev_null(root: Path) -> None:
    """An empty regular file at /dev/null of the step's copy, where /dev is a directory: no
    device node can be made here, and this keeps the commonest use working — `> /dev/null`
    writes go to a file no layer holds (/dev is hollow), reads see EOF, and sh can open it as
    a `&` job's stdin (without it, sh prints an error into the step's output)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    top = os.open(root, flags)
    try:
        dev = os.open("dev", flags, dir_fd=top)
    except OSError:  # no /dev, or a symlink: the step does without
        return
    finally:
        os.close(top)
    try:
        null = os.open("null", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                       | os.O_CLOEXEC, 0o666, dir_fd=dev)
        os.fchmod(null, 0o666)
        os.close(null)
    except FileExistsError:
        pass
    finally:
        os.close(dev)


@contextmanager
def recording(space: Workspace, root: Path, masked: frozenset[bytes]) -> Iterator[None]:
    """Snapshot `root` (but `masked`), let the step change it, then write `space.upper` from
    what changed. The snapshot's directories are held open meanwhile, so that one removed
    and made again gets another inode number (`treediff.Pins`). Nothing is written when
    the step fails. A replaced directory becomes opaque where this process may write
    overlay's `trusted.*` xattr, else it is recorded entry by entry (`treediff.diff`)."""
    with Pins(_room()) as pins:
        before = snapshot(root, masked, pins)
        yield
        after = snapshot(root, masked)
    probe = space.tmp / "opaque-probe"
    probe.mkdir()
    changes = diff(before, after, opaque=opaque_supported(probe))
    write_upper(changes, root, after, space.upper)


def _room() -> int:
    """How many directories a snapshot may hold open: a quarter of the descriptors left, so
    that stages running side by side and the step's own pipes always have some."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(0, (soft - len(os.listdir("/proc/self/fd"))) // 4)
