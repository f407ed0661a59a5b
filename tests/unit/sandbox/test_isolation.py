"""sandbox/isolation.py: which isolation an environment allows, decided on made-up
environments, and what it says about the modes it passed over. The real environments are
integration tests: root in an unprivileged podman container with and without user
namespaces (test_in_container.py, test_container_env.py), a process that cannot make any
namespace (test_chroot_isolation.py), a normal user (test_rootless.py)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from stepbuild.errors import IsolationUnavailable
from stepbuild.sandbox import isolation
from stepbuild.sandbox.isolation import (
    CAP_SYS_ADMIN,
    CAP_SYS_CHROOT,
    CHROOT,
    NAMESPACES,
    USERNS,
    Environment,
    Isolation,
    choose,
    effective_capabilities,
    probe,
)

ADMIN, CHROOT_CAP = 1 << CAP_SYS_ADMIN, 1 << CAP_SYS_CHROOT
PODMAN_DEFAULT = 0x800405FB  # CapEff of root in a default `podman run` (no CAP_SYS_ADMIN)
EVERYTHING = (1 << 41) - 1
PRIVILEGED = Environment(0, EVERYTHING)
POD = Environment(0, PODMAN_DEFAULT)  # user namespaces allowed (podman's default profile)
LOCKED_POD = Environment(0, PODMAN_DEFAULT, userns_errno=errno.EPERM)
SECCOMP_DENIES_NS = Environment(0, EVERYTHING, unshare_errno=errno.EPERM,
                                userns_errno=errno.EPERM)
USER = Environment(1000, 0)


@pytest.mark.parametrize(("env", "mode", "as_root", "reasons"), [
    (PRIVILEGED, NAMESPACES, True, ()),
    (POD, USERNS, True, ("namespaces unavailable: no CAP_SYS_ADMIN",)),
    (USER, USERNS, False, ("namespaces unavailable: not root",)),
    (LOCKED_POD, CHROOT, True, ("namespaces unavailable: no CAP_SYS_ADMIN",
                                "userns unavailable: user namespaces are refused"
                                " (unshare(CLONE_NEWUSER): EPERM")),
    (SECCOMP_DENIES_NS, CHROOT, True, ("namespaces unavailable: unshare(CLONE_NEWNS) refused"
                                       " (EPERM", "userns unavailable: user namespaces")),
])
def test_auto_takes_the_strongest_mode_and_says_why_not_the_others(
        env: Environment, mode: str, as_root: bool, reasons: tuple[str, ...]) -> None:
    chosen = choose("auto", env)
    assert (chosen.mode, chosen.as_root) == (mode, as_root)
    assert len(chosen.passed_over) == len(reasons)
    for said, expected in zip(chosen.passed_over, reasons, strict=True):
        assert said.startswith(expected)


def test_the_first_line_names_the_mode_and_for_userns_how() -> None:
    assert choose("auto", PRIVILEGED).describe() == "isolation: namespaces"
    assert choose("auto", POD).describe() == ("isolation: userns (root without CAP_SYS_ADMIN,"
                                              " every id mapped to itself)")
    assert choose("auto", USER).describe() == "isolation: userns (rootless, ids from /etc/subuid)"
    assert choose("auto", LOCKED_POD).describe() == "isolation: chroot"


def test_a_mode_asked_for_by_name_is_taken_when_possible() -> None:
    assert choose(CHROOT, PRIVILEGED) == Isolation(CHROOT)
    assert choose(NAMESPACES, PRIVILEGED) == Isolation(NAMESPACES)
    assert choose(USERNS, PRIVILEGED) == Isolation(USERNS)  # root may opt into a userns
    assert choose(CHROOT, POD) == Isolation(CHROOT)


def test_namespaces_asked_for_without_cap_sys_admin_is_refused_with_the_options() -> None:
    with pytest.raises(IsolationUnavailable) as caught:
        choose(NAMESPACES, POD)
    assert "CAP_SYS_ADMIN" in caught.value.message
    assert "\n" not in caught.value.message
    assert caught.value.hint is not None and "--isolation=auto" in caught.value.hint


def test_namespaces_refused_by_seccomp_names_the_errno() -> None:
    with pytest.raises(IsolationUnavailable) as caught:
        choose(NAMESPACES, SECCOMP_DENIES_NS)
    assert "unshare(CLONE_NEWNS) refused (EPERM" in caught.value.message


def test_chroot_needs_root_and_cap_sys_chroot() -> None:
    with pytest.raises(IsolationUnavailable, match="CAP_SYS_CHROOT"):
        choose(CHROOT, Environment(0, ADMIN))
    with pytest.raises(IsolationUnavailable, match="not root"):
        choose(CHROOT, USER)


def test_nothing_possible_names_every_missing_piece_and_the_options() -> None:
    with pytest.raises(IsolationUnavailable) as caught:
        choose("auto", Environment(0, 0, userns_errno=errno.EPERM))
    message = caught.value.message
    assert message.startswith("no isolation for RUN steps is possible here: namespaces: no"
                              " CAP_SYS_ADMIN")
    assert "userns: user namespaces are refused (unshare(CLONE_NEWUSER): EPERM" in message
    assert "chroot: no CAP_SYS_CHROOT" in message
    assert "\n" not in message
    hint = caught.value.hint or ""
    assert "CAP_SYS_CHROOT" in hint and "allows user namespaces" in hint
    assert "CAP_SYS_ADMIN" in hint


def test_an_unknown_mode_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="rootless"):
        choose("rootless", PRIVILEGED)


def test_effective_capabilities_are_read_from_the_status_file(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t00000000800405fb\n")
    assert effective_capabilities(str(status)) == PODMAN_DEFAULT
    status.write_text("Name:\tpython\n")
    assert effective_capabilities(str(status)) == 0
    assert effective_capabilities(str(tmp_path / "missing")) == 0


@pytest.mark.root
def test_the_probes_of_this_root_process_find_namespaces_possible() -> None:
    """CI runs as root with every capability: the mount namespace probe (a throwaway child)
    works, no user namespace probe is needed, and asking for chroot forks for neither."""
    env = probe("auto")
    assert env.effective & ADMIN and env.unshare_errno is None and env.userns_errno is None
    assert choose("auto", env).mode == NAMESPACES
    assert probe(CHROOT) == Environment(0, env.effective)


def test_the_user_namespace_probe_answers_in_a_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CAP_SYS_ADMIN the probe really forks and unshares; this process stays where
    it is (its user namespace inode is unchanged)."""
    before = os.stat("/proc/self/ns/user").st_ino
    status = f"CapEff:\t{PODMAN_DEFAULT:016x}\nSeccomp:\t0\n"
    monkeypatch.setattr(isolation, "_status", lambda path="": status)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    env = probe()
    assert env.effective == PODMAN_DEFAULT
    assert env.userns_errno is None  # this kernel allows user namespaces (issue 13's facts)
    assert choose("auto", env).mode == USERNS
    assert os.stat("/proc/self/ns/user").st_ino == before
