"""An overlay of an image's layer dirs with a fresh upper dir, mounted for one step or run.

The builder runs in a private mount namespace (`commands.enter_build_namespace`), so these
mounts are invisible to the host and vanish with the builder even if it is killed. The layout
under the step's temporary dir: `merged/` (the mount), `upper/` (what the step changes),
`work/` (overlayfs bookkeeping), `empty/` (the lower dir of an image with no layers).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def mounted(tmp: Path, lowers: Sequence[Path]) -> Iterator[Path]:
    """Mount lowers (top first) + tmp/upper at tmp/merged; unmount on exit."""
    from stepbuild.sandbox import linux

    merged, upper, work = tmp / "merged", tmp / "upper", tmp / "work"
    for path in (merged, upper, work):
        path.mkdir()
    if not lowers:
        # Overlayfs needs a lower dir; an empty one stands for an image with no layers.
        empty = tmp / "empty"
        empty.mkdir()
        lowers = [empty]
    linux.mount_overlay(str(merged), [str(p) for p in lowers], str(upper), str(work))
    try:
        yield merged
    finally:
        linux.umount(str(merged))


@contextmanager
def mounted_readonly(target: Path, lowers: Sequence[Path]) -> Iterator[Path]:
    """Mount an image's layers read-only at `target` (e.g. the source of COPY --from)."""
    from stepbuild.sandbox import linux

    target.mkdir()
    if not lowers:
        yield target  # an image with no layers: an empty dir is its whole content
        return
    linux.mount_overlay(str(target), [str(p) for p in lowers], None, None, readonly=True)
    try:
        yield target
    finally:
        linux.umount(str(target))
