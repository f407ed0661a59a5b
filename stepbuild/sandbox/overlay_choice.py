"""Which overlay the builder mounts: the kernel's, or fuse-overlayfs where the kernel refuses.

Decided once per builder, by its first overlay mount (`host.py`), and remembered: root and a
kernel that mounts overlay in the user namespace take the kernel's; a rootless builder whose
kernel refuses (EINVAL, EPERM or ENODEV: Linux < 5.11, or a seccomp profile) takes
fuse-overlayfs if it can run, else stops with one line naming what is missing. `choose` is the
pure decision; `-v` prints `OverlayChoice.describe()`.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from stepbuild.errors import RootlessError

__all__ = ["FUSE", "KERNEL", "REFUSALS", "OverlayChoice", "choose"]

KERNEL, FUSE = "kernel", "fuse-overlayfs"
# What a kernel without overlay in user namespaces answers (fs_context: EPERM without
# FS_USERNS_MOUNT; EINVAL for an option it does not know, such as userxattr), or ENODEV
# without the overlay module.
REFUSALS = frozenset({errno.EINVAL, errno.EPERM, errno.ENODEV})


@dataclass(frozen=True)
class OverlayChoice:
    """The overlay a builder mounts, and why (`refused`: the kernel's errno name, if any)."""

    driver: str
    refused: str | None = None

    def describe(self) -> str:
        if self.driver == FUSE:
            return (f"overlay: fuse-overlayfs (the kernel refused overlay in a user namespace:"
                    f" {self.refused})")
        return "overlay: kernel"


def choose(kernel_errno: int, fuse_missing: str | None) -> OverlayChoice:
    """After a rootless kernel mount failed with `kernel_errno`: fuse-overlayfs, or a
    RootlessError saying why neither works (`fuse_missing`, from `fuse_overlay.missing`)."""
    name = errno.errorcode.get(kernel_errno, str(kernel_errno))
    if fuse_missing is not None:
        raise RootlessError(f"rootless: the kernel refused an overlay mount in the user"
                            f" namespace ({name}), and the fuse-overlayfs fallback cannot run:"
                            f" {fuse_missing}")
    return OverlayChoice(FUSE, name)
