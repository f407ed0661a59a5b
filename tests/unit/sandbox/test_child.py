"""The sandbox child's pure helpers (the rest of child.py runs for real in
tests/integration/test_sandbox.py)."""

from __future__ import annotations

import errno
import os

import pytest

from stepbuild.errors import SandboxError
from stepbuild.sandbox import child


@pytest.mark.parametrize(("error", "op"), [
    # linux.py's errors: "what: reason"
    (OSError(errno.EPERM, f"SIOCSIFFLAGS lo: {os.strerror(errno.EPERM)}"),
     "sandbox setup: SIOCSIFFLAGS lo"),
    # os's own: the reason alone
    (OSError(errno.ENOENT, os.strerror(errno.ENOENT)), "sandbox setup"),
    # anything else is kept whole
    (OSError(errno.EIO, "odd text"), "sandbox setup: odd text"),
    (OSError("no errno"), "sandbox setup"),
])
def test_the_reason_is_said_once(error: OSError, op: str) -> None:
    assert child.failed_op("sandbox setup", error) == op
    rendered = SandboxError(op, error.errno or 0).message
    if error.errno:
        assert rendered.count(os.strerror(error.errno)) == 1, rendered


def test_a_refused_sethostname_is_a_notice_and_the_step_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """podman's seccomp profile refuses sethostname without CAP_SYS_ADMIN (EPERM): the step
    keeps the container's hostname (tests/integration/test_in_container.py runs it for
    real); another errno is still a setup failure."""
    notices: list[tuple[str, ...]] = []
    monkeypatch.setattr(child, "report", lambda *fields: notices.append(fields))

    def refused(name: str) -> None:
        raise OSError(errno.EPERM, "sethostname: Operation not permitted")

    monkeypatch.setattr(child.linux, "sethostname", refused)
    child.set_hostname("stepbuild")
    [(kind, text)] = notices
    assert kind == "N" and "sethostname refused" in text and "'stepbuild'" in text

    def broken(name: str) -> None:
        raise OSError(errno.EINVAL, "sethostname: Invalid argument")

    monkeypatch.setattr(child.linux, "sethostname", broken)
    with pytest.raises(OSError) as caught:
        child.set_hostname("x" * 100)
    assert caught.value.errno == errno.EINVAL
