"""stepbuild.sandbox.host's error paths: a refused mount namespace becomes one SandboxError,
a store on overlayfs one StoreError naming the fix.

The real refusal (root in an unprivileged podman container) is proven in
tests/integration/test_container_env.py; here the kernel's answer is given, to show that only
EPERM is turned into the CAP_SYS_ADMIN error and anything else is left as it is.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from stepbuild.errors import SandboxError, StoreError
from stepbuild.sandbox import host


def kernel_says(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    def refused() -> None:
        raise OSError(code, f"unshare: {errno.errorcode[code]}")

    monkeypatch.setattr("stepbuild.sandbox.linux.enter_private_mount_namespace", refused)


def test_eperm_is_a_sandbox_error_naming_cap_sys_admin(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel_says(monkeypatch, errno.EPERM)
    with pytest.raises(SandboxError) as caught:
        host.enter_private_mount_namespace()
    assert caught.value.errno == errno.EPERM
    assert "CAP_SYS_ADMIN" in caught.value.message
    assert caught.value.hint is not None and "--privileged" in caught.value.hint


def test_another_errno_is_not_disguised(monkeypatch: pytest.MonkeyPatch) -> None:
    """EINVAL (a thread already started) is a bug of ours, not a missing capability."""
    kernel_says(monkeypatch, errno.EINVAL)
    with pytest.raises(OSError) as caught:
        host.enter_private_mount_namespace()
    assert not isinstance(caught.value, SandboxError)
    assert caught.value.errno == errno.EINVAL


# --- the store's filesystem: overlay cannot put upper dirs on overlayfs ---------------------


def test_a_store_on_overlayfs_is_refused_naming_a_volume(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The real case (the container's own root) is in tests/integration/test_in_container.py."""
    monkeypatch.setattr("stepbuild.sandbox.linux.filesystem_type",
                        lambda path: host.OVERLAYFS_MAGIC)
    with pytest.raises(StoreError) as caught:
        host.require_upper_dir_filesystem(tmp_path / "store" / "tmp")
    assert caught.value.message.startswith(f"the store {tmp_path / 'store'} is on overlayfs")
    assert caught.value.hint is not None and "volume" in caught.value.hint
    assert "STEPBUILD_ROOT" in caught.value.hint


def test_a_store_elsewhere_passes(tmp_path: Path) -> None:
    """tmp_path is on the test machine's disk or tmpfs: the real statfs answers, not overlay
    (the real overlay, a container's root, is refused in test_in_container.py)."""
    host.require_upper_dir_filesystem(tmp_path)
    host.require_upper_dir_filesystem(tmp_path / "missing")  # the store says that itself
