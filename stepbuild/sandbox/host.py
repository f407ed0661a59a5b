"""The mounts the builder process itself makes, and its private mount namespace.

Everything privileged the builder does outside a step's sandbox is here, behind functions
that take plain values (paths, fds, sizes) and clean up after themselves; callers in
`build/` say what they need and never call `linux` themselves.

The builder runs in a private mount namespace (`enter_private_mount_namespace`, called by
`commands.enter_build_namespace`), so these mounts are invisible to the host and vanish with
the builder even if it is killed. The overlay layout under a step's temporary dir:
`merged/` (the mount), `upper/` (what the step changes), `work/` (overlayfs bookkeeping),
`empty/` (the lower dir of an image with no layers).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from stepbuild.errors import RootlessError, StoreError
from stepbuild.fs.userns import in_user_namespace
from stepbuild.sandbox.overlay_choice import FUSE, KERNEL, REFUSALS, OverlayChoice, choose

OVERLAYFS_MAGIC = 0x794C7630  # statfs(2)'s f_type of an overlay (include/uapi/linux/magic.h)
STORE_ON_VOLUME_HINT = ("put the store on a volume or a tmpfs: run the container with -v"
                        " stepbuild-store:/var/lib/stepbuild (a named volume; an emptyDir in a"
                        " Kubernetes pod), or point --root or STEPBUILD_ROOT at one")
# --cap-add SYS_ADMIN alone is not offered: RUN steps also need CAP_NET_ADMIN (the step's lo).
NO_SYS_ADMIN_HINT = ("run stepbuild as root with CAP_SYS_ADMIN: on the host, or in a container "
                     "run with --privileged")


def enter_private_mount_namespace() -> None:
    """Move this process into a mount namespace of its own, shared with nothing: every mount
    it makes afterwards vanishes with it. Call once, before any thread starts.

    Where the kernel refuses (EPERM: root without CAP_SYS_ADMIN, as in an unprivileged
    container's default pod), a SandboxError says what is missing, before anything is done.
    """
    from stepbuild.errors import SandboxError
    from stepbuild.sandbox import linux  # noqa: TID251 -- host.py is sandbox/'s builder side

    try:
        linux.enter_private_mount_namespace()
    except PermissionError as e:
        raise SandboxError("cannot make the builder's mount namespace (unshare needs "
                           "CAP_SYS_ADMIN)", e.errno or 0, hint=NO_SYS_ADMIN_HINT) from None


def require_upper_dir_filesystem(path: Path) -> None:
    """Refuse a store whose upper dirs would land on overlayfs — a container's own root, as an
    image's root is an overlay — in one line naming the fix, before any step runs: overlay
    refuses an upper dir there ("filesystem ... not supported as upperdir"), so every step
    would fail."""
    from stepbuild.sandbox import linux  # noqa: TID251 -- host.py is sandbox/'s builder side

    try:
        kind = linux.filesystem_type(str(path))
    except OSError:
        return  # not there yet or unreadable: the store reports that itself
    if kind == OVERLAYFS_MAGIC:
        store = path.parent if path.name == "tmp" else path
        raise StoreError(f"the store {store} is on overlayfs (a container's own root?), where"
                         f" overlay cannot keep the changes of a step", hint=STORE_ON_VOLUME_HINT)


def distinct(lowers: Sequence[Path]) -> list[str]:
    """The lower dirs (top first) with a repeated layer kept only at its topmost place.

    OCI lets an image list one diff_id twice (three identical `COPY foo /foo` steps do), but
    overlayfs refuses the same lowerdir twice. Dropping the lower copies changes nothing that
    can be seen: the top copy holds every path, whiteout and opaque dir the lower ones do, so
    it covers them and whatever the layers between did to those paths."""
    return list(dict.fromkeys(str(path) for path in lowers))


@contextmanager
def mounted(tmp: Path, lowers: Sequence[Path]) -> Iterator[Path]:
    """Mount lowers (top first) + tmp/upper at tmp/merged; unmount on exit. Through
    fuse-overlayfs (`uses_fuse()`), tmp/upper is in its form until `layers/fuse_upper.py`
    turns it into the kernel's."""
    merged, upper, work = tmp / "merged", tmp / "upper", tmp / "work"
    for path in (merged, upper, work):
        path.mkdir()
    if not lowers:
        # Overlayfs needs a lower dir; an empty one stands for an image with no layers.
        empty = tmp / "empty"
        empty.mkdir()
        lowers = [empty]
    unmount = _mount_overlay(str(merged), distinct(lowers), str(upper), str(work))
    try:
        yield merged
    finally:
        unmount()


@contextmanager
def mounted_readonly(target: Path, lowers: Sequence[Path]) -> Iterator[Path]:
    """Mount an image's layers read-only at `target` (e.g. the source of COPY --from)."""
    target.mkdir()
    if not lowers:
        yield target  # an image with no layers: an empty dir is its whole content
        return
    unmount = _mount_overlay(str(target), distinct(lowers), None, None, readonly=True)
    try:
        yield target
    finally:
        unmount()


_choice: OverlayChoice | None = None  # decided by this builder's first overlay mount
_choice_lock = threading.Lock()  # stages mount from threads of their own
_on_choice: Callable[[str], None] | None = None


def on_overlay_choice(tell: Callable[[str], None]) -> None:
    """Have `tell` called with `OverlayChoice.describe()` once the choice is made (-v)."""
    global _on_choice
    _on_choice = tell


def uses_fuse() -> bool:
    """Whether this builder's overlays are fuse-overlayfs mounts (after its first mount)."""
    return _choice is not None and _choice.driver == FUSE


def _mount_overlay(target: str, lowers: list[str], upper: str | None, work: str | None, *,
                   readonly: bool = False) -> Callable[[], None]:
    """An overlay on `target` the way this builder mounts them; returns its unmount.

    The first mount decides (`overlay_choice.py`): the kernel's, with `userxattr` when
    rootless (fs/userns.py); where the kernel refuses a rootless one, fuse-overlayfs from then
    on, or a RootlessError saying why neither can be used. Other failures: the OSError."""
    global _choice
    from stepbuild.sandbox import linux  # noqa: TID251 -- host.py is sandbox/'s builder side

    if upper is None and len(lowers) == 1:
        # One lower without an upper dir: a read-only bind either way (overlayfs refuses
        # one lower alone), which tells nothing about overlay: the choice waits.
        linux.bind_mount(lowers[0], target, readonly=True)
        return lambda: linux.umount(target)
    with _choice_lock:
        if _choice is None:
            _choice, unmount = _first_mount(target, lowers, upper, work, readonly)
            if _on_choice is not None:
                _on_choice(_choice.describe())
            return unmount
    if _choice.driver == FUSE:
        return _fuse_mount(target, lowers, upper, work)
    linux.mount_overlay(target, lowers, upper, work, readonly=readonly,
                        userxattr=in_user_namespace())
    return lambda: linux.umount(target)


def _first_mount(target: str, lowers: list[str], upper: str | None, work: str | None,
                 readonly: bool) -> tuple[OverlayChoice, Callable[[], None]]:
    """Try the kernel's overlay; the choice that follows, and the unmount of the mount made
    either way."""
    from stepbuild.sandbox import fuse_overlay, linux  # noqa: TID251 -- sandbox/'s builder side

    rootless = in_user_namespace()
    try:
        linux.mount_overlay(target, lowers, upper, work, readonly=readonly, userxattr=rootless)
        return OverlayChoice(KERNEL), lambda: linux.umount(target)
    except OSError as exc:
        if not rootless or exc.errno not in REFUSALS:
            raise
        refused = exc.errno
    choice = choose(refused, fuse_overlay.missing())
    return choice, _fuse_mount(target, lowers, upper, work)


def _fuse_mount(target: str, lowers: list[str], upper: str | None,
                work: str | None) -> Callable[[], None]:
    from stepbuild.sandbox import fuse_overlay

    try:
        mount = fuse_overlay.mount(target, lowers, upper, work)
    except OSError as exc:
        raise RootlessError(f"rootless: fuse-overlayfs could not mount {target}: {exc.strerror}",
                            hint=fuse_overlay.PACKAGE_HINT) from None
    return mount.unmount


@contextmanager
def bind_mounted(source_fd: int, target: Path) -> Iterator[Path]:
    """Bind what `source_fd` refers to (a file or directory; an O_PATH fd will do; the caller
    keeps and closes it) onto `target`, an existing file or directory; unmount on exit.

    Going through the fd rather than a path means nothing on the way to the source (a
    symlink in an image or a cache) is followed again at mount time.
    """
    from stepbuild.sandbox import linux  # noqa: TID251 -- host.py is sandbox/'s builder side

    with _attached(linux.clone_tree(source_fd), target):
        yield target


@contextmanager
def tmpfs_mounted(target: Path, *, size: int, mode: int) -> Iterator[Path]:
    """Mount a tmpfs of at most `size` bytes on the directory `target`, its root dir with
    `mode`, nodev, nosuid and noexec (it holds data, never programs); unmount on exit, which
    discards its content. What it holds never reaches a disk."""
    from stepbuild.sandbox import linux  # noqa: TID251 -- host.py is sandbox/'s builder side

    attrs = linux.ATTRS["nodev"] | linux.ATTRS["nosuid"] | linux.ATTRS["noexec"]
    tree = linux.new_fs("tmpfs", [("source", "tmpfs"), ("mode", f"{mode:04o}"),
                                  ("size", str(size))], attrs)
    with _attached(tree, target):
        yield target


@contextmanager
def _attached(tree: int, target: Path) -> Iterator[None]:
    """Attach the detached mount `tree` (an fd, closed here) on `target`; unmount on exit."""
    from stepbuild.sandbox import linux  # noqa: TID251 -- host.py is sandbox/'s builder side

    try:
        linux.attach(tree, str(target))
    finally:
        os.close(tree)
    try:
        yield
    finally:
        linux.umount(str(target))

