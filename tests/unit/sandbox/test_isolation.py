"""sandbox/isolation.py: which isolation an environment allows, decided on made-up
environments (the real probes are exercised by tests/integration/test_chroot_isolation.py,
in a process that really cannot make a namespace)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from stepbuild.errors import IsolationUnavailable
from stepbuild.sandbox.isolation import (
    CAP_SYS_ADMIN,
    CAP_SYS_CHROOT,
    Environment,
    Isolation,
    choose,
    effective_capabilities,
    probe,
)

ADMIN, CHROOT = 1 << CAP_SYS_ADMIN, 1 << CAP_SYS_CHROOT
PRIVILEGED = Environment(ADMIN | CHROOT)
UNPRIVILEGED_POD = Environment(CHROOT)  # podman's default capabilities
SECCOMP_DENIES = Environment(ADMIN | CHROOT, unshare_errno=errno.EPERM)
NOTHING = Environment(0)


@pytest.mark.parametrize(("env", "mode", "reasons"), [
    (PRIVILEGED, "namespaces", ()),
    (UNPRIVILEGED_POD, "chroot", ("namespaces unavailable: no CAP_SYS_ADMIN",)),
    (SECCOMP_DENIES, "chroot", ("namespaces unavailable: unshare(CLONE_NEWNS) refused (EPERM",)),
])
def test_auto_takes_the_strongest_mode_and_says_why_not_the_others(
        env: Environment, mode: str, reasons: tuple[str, ...]) -> None:
    chosen = choose("auto", env)
    assert chosen.mode == mode
    assert len(chosen.passed_over) == len(reasons)
    for said, expected in zip(chosen.passed_over, reasons, strict=True):
        assert said.startswith(expected)


def test_a_mode_asked_for_by_name_is_taken_when_possible() -> None:
    assert choose("chroot", PRIVILEGED) == Isolation("chroot")
    assert choose("namespaces", PRIVILEGED) == Isolation("namespaces")
    assert choose("chroot", UNPRIVILEGED_POD) == Isolation("chroot")


def test_namespaces_asked_for_without_cap_sys_admin_is_refused_with_the_options() -> None:
    with pytest.raises(IsolationUnavailable) as caught:
        choose("namespaces", UNPRIVILEGED_POD)
    assert "CAP_SYS_ADMIN" in caught.value.message
    assert "\n" not in caught.value.message
    assert caught.value.hint is not None and "--isolation=chroot" in caught.value.hint


def test_namespaces_refused_by_seccomp_names_the_errno() -> None:
    with pytest.raises(IsolationUnavailable) as caught:
        choose("namespaces", SECCOMP_DENIES)
    assert "unshare(CLONE_NEWNS) refused (EPERM" in caught.value.message


def test_chroot_without_cap_sys_chroot_is_refused() -> None:
    with pytest.raises(IsolationUnavailable) as caught:
        choose("chroot", Environment(ADMIN))
    assert "CAP_SYS_CHROOT" in caught.value.message


def test_auto_where_nothing_is_possible_names_every_missing_capability() -> None:
    with pytest.raises(IsolationUnavailable) as caught:
        choose("auto", NOTHING)
    message = caught.value.message
    assert message.startswith("no isolation is possible here")
    assert "CAP_SYS_ADMIN" in message and "CAP_SYS_CHROOT" in message
    assert caught.value.hint is not None and "CAP_SYS_CHROOT" in caught.value.hint


def test_an_unknown_mode_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="rootless"):
        choose("rootless", PRIVILEGED)


def test_effective_capabilities_are_read_from_the_status_file(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t00000000a80425fb\n")
    assert effective_capabilities(str(status)) == 0xA80425FB
    assert effective_capabilities(str(tmp_path / "missing")) == 0


@pytest.mark.root
def test_the_probes_of_this_root_process_find_namespaces_possible() -> None:
    """CI runs as root with every capability: the unshare probe (a throwaway child) works,
    and asking for chroot does not even fork for it."""
    env = probe("auto")
    assert env.effective & ADMIN and env.unshare_errno is None
    assert choose("auto", env).mode == "namespaces"
    assert probe("chroot") == Environment(env.effective)
