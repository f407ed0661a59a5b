"""stepbuild.sandbox.host's error path: a refused mount namespace becomes one SandboxError.

The real refusal (root in an unprivileged podman container) is proven in
tests/integration/test_container_env.py; here the kernel's answer is given, to show that only
EPERM is turned into the CAP_SYS_ADMIN error and anything else is left as it is.
"""

from __future__ import annotations

import errno

import pytest

from stepbuild.errors import SandboxError
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
