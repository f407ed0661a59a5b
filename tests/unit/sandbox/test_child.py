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
