"""Integration tests: real mounts and namespaces, as root (CI runs them as root).

Not being root is a failure here, not a skip: a suite that silently skips its privileged half
proves nothing (containerd's RequiresRoot).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static


@pytest.fixture(scope="session", autouse=True)
def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (mounts, namespaces): run them as root")


@pytest.fixture(scope="session")
def private_mount_ns() -> None:
    """Move this pytest process into a private mount namespace, once per session.

    Every mount a test makes then stays invisible to the host and vanishes when pytest exits,
    even if it is killed. Must run before pytest starts any thread (unshare(2), EINVAL).
    """
    from stepbuild.sandbox import host

    host.enter_private_mount_namespace()


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny rootfs: /bin/busybox with a relative symlink per applet, /etc/passwd and group,
    empty /etc/hosts and resolv.conf (no /etc/hostname), and the usual empty mount points.
    Treat it as read-only: use it as an overlay lower dir."""
    if not BUSYBOX.is_file():
        pytest.fail(f"{BUSYBOX} missing: apt-get install busybox-static")
    root = tmp_path_factory.mktemp("busybox") / "rootfs"
    for d in ("bin", "etc", "proc", "sys", "dev", "root", "tmp"):
        (root / d).mkdir(parents=True)
    (root / "tmp").chmod(0o1777)
    (root / "root").chmod(0o700)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
    for name in applets.stdout.split():
        if name != "busybox":
            (root / "bin" / name).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "etc" / "hosts").write_text("")
    (root / "etc" / "resolv.conf").write_text("")
    return root
