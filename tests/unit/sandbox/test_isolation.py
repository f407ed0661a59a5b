"""Which isolation stepbuild/sandbox/isolation.py chooses, on made-up environments, and what it
says about the modes it passed over. The real environments (root in an unprivileged podman
container, with and without user namespaces) are in tests/integration/test_in_container.py
and test_container_env.py; a normal user's in test_rootless.py."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from stepbuild.errors import IsolationUnavailable
from stepbuild.sandbox import isolation
from stepbuild.sandbox.isolation import NAMESPACES, USERNS, Environment, Isolation, choose

SYS_ADMIN = 1 << 21
PODMAN_DEFAULT = 0x800405FB  # CapEff of root in a default `podman run` (no CAP_SYS_ADMIN)
EVERYTHING = (1 << 41) - 1


def test_root_with_cap_sys_admin_gets_namespaces() -> None:
    chosen = choose(Environment(0, EVERYTHING))
    assert chosen == Isolation(NAMESPACES, as_root=True, passed_over=())
    assert chosen.describe() == "isolation: namespaces"


def test_root_without_cap_sys_admin_gets_a_user_namespace_of_its_own() -> None:
    chosen = choose(Environment(0, PODMAN_DEFAULT, userns_errno=None))
    assert (chosen.mode, chosen.as_root) == (USERNS, True)
    assert chosen.describe() == ("isolation: userns (root without CAP_SYS_ADMIN, every id"
                                 " mapped to itself)")
    [reason] = chosen.passed_over
    assert reason.startswith("namespaces unavailable: no CAP_SYS_ADMIN")


def test_a_normal_user_is_rootless() -> None:
    chosen = choose(Environment(1000, 0))
    assert (chosen.mode, chosen.as_root) == (USERNS, False)
    assert chosen.describe() == "isolation: userns (rootless, ids from /etc/subuid)"
    assert chosen.passed_over == ("namespaces unavailable: not root",)


def test_nothing_possible_names_every_missing_piece_and_the_options() -> None:
    with pytest.raises(IsolationUnavailable) as caught:
        choose(Environment(0, PODMAN_DEFAULT, userns_errno=errno.EPERM))
    message = caught.value.message
    assert message.startswith("no isolation for RUN steps is possible here: namespaces: no"
                              " CAP_SYS_ADMIN")
    assert "userns: user namespaces are refused (unshare(CLONE_NEWUSER): EPERM" in message
    assert "\n" not in message
    hint = caught.value.hint or ""
    assert "seccomp profile that allows user namespaces" in hint and "CAP_SYS_ADMIN" in hint


def test_effective_capabilities_are_read_from_status(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t00000000800405fb\n")
    assert isolation._effective_capabilities(str(status)) == PODMAN_DEFAULT
    status.write_text("Name:\tpython\n")
    assert isolation._effective_capabilities(str(status)) == 0
    assert isolation._effective_capabilities(str(tmp_path / "missing")) == 0


def test_probe_on_this_machine() -> None:
    """The unit suite runs on the host: root there has CAP_SYS_ADMIN (no user namespace probe
    is needed); a normal user does not, and is rootless."""
    env = isolation.probe()
    assert env.euid == os.geteuid() and env.userns_errno is None
    expected = NAMESPACES if os.geteuid() == 0 else USERNS
    assert choose(env).mode == expected


def test_the_user_namespace_probe_answers_in_a_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CAP_SYS_ADMIN the probe really forks and unshares; this process stays where
    it is (its user namespace inode is unchanged)."""
    before = os.stat("/proc/self/ns/user").st_ino
    monkeypatch.setattr(isolation, "_effective_capabilities", lambda: PODMAN_DEFAULT)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    env = isolation.probe()
    assert env.effective == PODMAN_DEFAULT
    assert env.userns_errno is None  # this kernel allows user namespaces (issue 13's facts)
    assert os.stat("/proc/self/ns/user").st_ino == before
