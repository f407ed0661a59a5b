"""fuse-overlayfs: the overlay of a rootless builder whose kernel refuses one in its user
namespace (Linux < 5.11 has no `userxattr`), as rootless podman and buildah fall back to.

`mount` runs the program (Debian's fuse-overlayfs) in the foreground, under the builder, in
the builder's private mount namespace: it mounts the same lower, upper and work dirs the
kernel overlay would have used, and serves the mount until `FuseMount.unmount` detaches it
and ends the program; it never outlives the builder (`_TIED`). No syscall of ours mounts it
(the program does), so this is the only place that starts it; the detach is `linux.umount`,
as for a kernel overlay.

The program leaves its own on-disk forms in the upper dir (an opaque dir carries
`user.fuseoverlayfs.opaque` and two marker entries; copied-up dirs keep no mtime):
`layers/fuse_upper.py` turns them into the kernel's before the layer is captured.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from stepbuild.errors import RootlessError

__all__ = ["FUSE_DEVICE", "PROGRAM", "FuseMount", "missing", "mount", "options"]

PROGRAM = "fuse-overlayfs"
FUSE_DEVICE = "/dev/fuse"
FUSE_SUPER_MAGIC = 0x65735546  # statfs(2)'s f_type of a FUSE mount (include/uapi/linux/magic.h)
PACKAGE_HINT = "apt-get install fuse-overlayfs (the Debian package)"
# The program must die with the builder (a daemon left would keep the builder's mount
# namespace and its mount alive). A parent-death signal set on the program itself is not
# enough to count on: the kernel clears it whenever the process changes its effective or fs
# ids (commit_creds), and once here a kill -9 of the builder left fuse-overlayfs running with
# `setpriv --pdeathsig` alone (not reproduced since). So it runs in a PID namespace of its own
# under a shell as PID 1, which changes no ids: setpriv gives `unshare` SIGKILL when the
# builder thread that started it ends, unshare's --kill-child gives the shell SIGKILL when
# unshare ends, and when a PID namespace's first process ends the kernel kills every process
# in it. The shell waits for the program, so the program's exit status and messages are
# unshare's. A session of its own: a ^C at the terminal is the builder's to handle.
_TIED = ("setpriv", "--pdeathsig", "KILL", "--",
         "unshare", "--pid", "--fork", "--kill-child=KILL", "--",
         "/bin/sh", "-c", '"$@" & wait $!', "sh")
_POLL_SECONDS = 0.002  # how often the mount is looked for while the program starts it


def options(lowers: Sequence[str], upper: str | None, work: str | None) -> str:
    """fuse-overlayfs's -o string: lowerdir (top first, ':'-separated), then the upper and
    work dirs if any (without them the mount is read-only). Its option parser has no escape
    for ',' and ':', so a dir named with one is refused (a RootlessError) rather than split."""
    dirs = [*lowers, *(d for d in (upper, work) if d is not None)]
    for path in dirs:
        if "," in path or ":" in path:
            raise RootlessError(f"fuse-overlayfs cannot mount {path}: the name has a ',' or ':'",
                                hint="put the store in a directory whose path has neither")
    text = "lowerdir=" + ":".join(lowers)
    if upper is not None:
        text += f",upperdir={upper},workdir={work}"
    return text


def missing() -> str | None:
    """Why fuse-overlayfs cannot be used here, in one line, or None: the program on PATH and
    /dev/fuse readable and writable (FUSE mounts in a user namespace: Linux >= 4.18)."""
    if shutil.which(PROGRAM) is None:
        return f"{PROGRAM} is not installed (not found on PATH); {PACKAGE_HINT}"
    if not os.path.exists(FUSE_DEVICE):
        return f"{FUSE_DEVICE} is missing (load the fuse module, or give a container the device)"
    if not os.access(FUSE_DEVICE, os.R_OK | os.W_OK):
        return f"{FUSE_DEVICE} is not readable and writable by your user (make it 0666)"
    return None


@dataclass
class FuseMount:
    """A running fuse-overlayfs serving `target`."""

    target: str
    process: subprocess.Popen[bytes]

    def unmount(self) -> None:
        """Detach the mount, then end the program and wait: SIGKILL to `unshare`, whose
        death takes the PID namespace the program runs in with it (see `mount`). Nothing of
        it outlives the step, even where a copy of the mount is still held in another
        namespace; what it wrote is already in the upper dir (FUSE writes are synchronous)."""
        from stepbuild.sandbox import linux  # noqa: TID251 -- sandbox/'s own

        try:
            linux.umount(self.target)
        finally:
            self.process.kill()
            self.process.wait()


def mount(target: str, lowers: Sequence[str], upper: str | None, work: str | None) -> FuseMount:
    """Start fuse-overlayfs on `target` and return once the mount is there. A program that
    exits first is an OSError carrying its last message line."""
    argv = [PROGRAM, "-f", "-o", options(lowers, upper, work), target]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([*_TIED, *argv],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)
        while process.poll() is None:
            if _fuse_mounted(target):
                return FuseMount(target, process)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=_POLL_SECONDS)
        log.seek(0)
        lines = [line for line in log.read().decode(errors="replace").splitlines()
                 if line and not line.startswith("unknown argument ignored")]
    reason = lines[-1] if lines else f"exit status {process.returncode}"
    raise OSError(0, f"{PROGRAM} {target}: {reason}")


def _fuse_mounted(target: str) -> bool:
    from stepbuild.sandbox import linux  # noqa: TID251 -- sandbox/'s own

    try:
        return linux.filesystem_type(target) == FUSE_SUPER_MAGIC
    except OSError:
        return False
