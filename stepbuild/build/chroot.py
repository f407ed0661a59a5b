"""A step's workspace under `--isolation=chroot`: a plain copy of the parent's tree instead of
an overlay, and the layer from what changed in it.

Where nothing can be mounted, `Executor.perform` (execute.py) does, for a step that missed
the cache:

    root = copy_parent(space, hollow=...)      # tmp/root: the parent's layers, merged
    ... put RUN's /etc files and stubs in place (run.furnish_chroot) ...
    before = snapshot(root, masked)
    ... RUN chrooted in root, or COPY/ADD/WORKDIR writing into root ...
    record_changes(space, root, before, masked) # tmp/upper, as overlay would have left it

after which capture and commit are those of every step: `tmp/upper` is an overlay upper dir
(whiteouts, opaque dirs) and becomes the layer dir, so the same change makes the same layer
in either mode (`layers/treediff.py` says how, and where it differs). The copy costs a full
read and write of the image per step, and each snapshot a read: chroot mode is the fallback
for where nothing better can run, not a fast path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepbuild.layers.merged import copy_merged
from stepbuild.layers.treediff import diff, snapshot
from stepbuild.layers.upperdir import opaque_supported, write_upper

if TYPE_CHECKING:
    from pathlib import Path

    from stepbuild.build.step import Workspace
    from stepbuild.layers.treediff import Entry

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


def take_snapshot(root: Path, masked: frozenset[bytes]) -> dict[bytes, Entry]:
    """The tree before the step (see `treediff.snapshot`)."""
    return snapshot(root, masked)


def record_changes(space: Workspace, root: Path, before: dict[bytes, Entry],
                   masked: frozenset[bytes]) -> None:
    """Write `space.upper` from what changed in `root` since `before` was taken. A replaced
    directory becomes opaque where this process may write overlay's `trusted.*` xattr, else
    it is recorded entry by entry (`treediff.diff`)."""
    after = snapshot(root, masked)
    probe = space.tmp / "opaque-probe"
    probe.mkdir()
    changes = diff(before, after, opaque=opaque_supported(probe))
    write_upper(changes, root, after, space.upper)
