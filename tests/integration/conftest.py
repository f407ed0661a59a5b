"""Integration tests: real mounts and namespaces, as root (CI runs them as root).

Not being root is a failure here, not a skip: a suite that silently skips its privileged half
proves nothing (containerd's RequiresRoot).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.containers import Container, Podman, write_no_userns_profile

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
PROBE_SOURCE = Path(__file__).with_name("syscall_probe.c")


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


@pytest.fixture(scope="session")
def syscall_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """syscall_probe.c built static, so it runs in the busybox image and in any container."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the syscall probe: run scripts/setup.sh")
    binary = tmp_path_factory.mktemp("probe") / "syscall_probe"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(binary), str(PROBE_SOURCE)], check=True)
    return binary


# --- unprivileged containers (tests/integration/containers.py) ----------------------------------


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    """podman with state of its own, for the whole session; every container of it is removed
    at the end, and a mount it left behind fails the session."""
    try:
        made = Podman.create(tmp_path_factory.mktemp("containers"))
    except RuntimeError as e:
        pytest.fail(str(e))
    yield made
    made.cleanup()


@pytest.fixture(scope="session")
def container_default(podman: Podman) -> Container:
    """Root in a default `podman run`: default capabilities (no CAP_SYS_ADMIN), podman's
    seccomp profile, which allows user namespaces."""
    return Container(podman, "default")


@pytest.fixture(scope="session")
def container_no_userns(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> Container:
    """As `container_default`, under podman's seccomp profile with user namespaces denied."""
    profile = tmp_path_factory.mktemp("seccomp") / "no-userns.json"
    return Container(podman, "no-userns", write_no_userns_profile(profile))


@pytest.fixture
def container_store(tmp_path: Path) -> Path:
    """An empty host dir for a container's store (bound at /store). 0755: a store refuses a
    root others may write to (docs/security.md rule 12)."""
    store = tmp_path / "store"
    store.mkdir()
    store.chmod(0o755)
    return store
