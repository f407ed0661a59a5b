"""cli/rootless.py's decision, with the environment made up and `userns.enter` recorded
instead of done: which commands continue in a user namespace, with which map, and which
stop where no isolation is possible (the real ones: tests/integration/test_in_container.py,
test_container_env.py, test_rootless.py)."""

from __future__ import annotations

import argparse
import errno

import pytest

from stepbuild.cli import rootless
from stepbuild.errors import IsolationUnavailable
from stepbuild.sandbox import isolation, userns
from stepbuild.sandbox.idmap import IdMaps

PODMAN_DEFAULT = 0x800405FB  # CapEff of root in a default `podman run`
EVERYTHING = (1 << 41) - 1


@pytest.fixture
def entered(monkeypatch: pytest.MonkeyPatch) -> list[IdMaps]:
    """The maps `userns.enter` was called with (it is not called for real)."""
    calls: list[IdMaps] = []
    monkeypatch.setattr(userns, "enter", calls.append)
    return calls


def environment(monkeypatch: pytest.MonkeyPatch, env: isolation.Environment) -> None:
    monkeypatch.setattr(isolation, "probe", lambda requested="auto": env)


def options(command: str) -> argparse.Namespace:
    return argparse.Namespace(userns=command, root=None)


def test_root_with_cap_sys_admin_stays(monkeypatch: pytest.MonkeyPatch,
                                       entered: list[IdMaps]) -> None:
    environment(monkeypatch, isolation.Environment(0, EVERYTHING))
    given = options("build")
    rootless.reenter(given)
    assert entered == []
    assert given.isolation_chosen.mode == isolation.NAMESPACES


def test_root_without_it_enters_with_its_identity_map(monkeypatch: pytest.MonkeyPatch,
                                                     entered: list[IdMaps]) -> None:
    environment(monkeypatch, isolation.Environment(0, PODMAN_DEFAULT))
    monkeypatch.setattr(userns, "_read", lambda path: "0 0 4294967295\n")
    given = options("pull")  # every store command: layer dirs get user.overlay.* xattrs
    rootless.reenter(given)
    [maps] = entered
    assert maps.privileged and maps.uids == maps.gids == ((0, 0, 2**32 - 1),)
    assert given.root is None  # root's store is the same inside: nothing to decide early
    assert given.isolation_chosen.describe().startswith("isolation: userns (root without")


def test_a_user_enters_with_its_subordinate_ids(monkeypatch: pytest.MonkeyPatch,
                                               entered: list[IdMaps]) -> None:
    environment(monkeypatch, isolation.Environment(1001, 0))
    monkeypatch.setattr(rootless.os, "getuid", lambda: 1001)
    monkeypatch.setattr(rootless.os, "getgid", lambda: 1001)
    monkeypatch.setattr(userns, "_read", lambda path: "1001:100000:65536\n")
    monkeypatch.setenv("XDG_DATA_HOME", "/home/u/.data")
    monkeypatch.delenv("STEPBUILD_ROOT", raising=False)
    monkeypatch.setattr(rootless.os, "geteuid", lambda: 1001)
    given = options("build")
    rootless.reenter(given)
    [maps] = entered
    assert not maps.privileged and maps.uids == ((0, 1001, 1), (1, 100000, 65536))
    assert given.root == "/home/u/.data/stepbuild"  # decided as the user, before entering


def test_root_without_user_namespaces_stays_for_chroot(monkeypatch: pytest.MonkeyPatch,
                                                       entered: list[IdMaps]) -> None:
    environment(monkeypatch, isolation.Environment(0, PODMAN_DEFAULT, userns_errno=errno.EPERM))
    given = options("build")
    rootless.reenter(given)
    assert entered == []
    assert given.isolation_chosen.mode == isolation.CHROOT


def test_isolation_asked_for_is_builds_and_runs_alone(monkeypatch: pytest.MonkeyPatch,
                                                     entered: list[IdMaps]) -> None:
    environment(monkeypatch, isolation.Environment(0, EVERYTHING))
    given = options("build")
    given.isolation = isolation.CHROOT
    rootless.reenter(given)
    assert given.isolation_chosen.mode == isolation.CHROOT and entered == []
    other = options("images")
    other.isolation = isolation.CHROOT  # not an option of images: auto
    rootless.reenter(other)
    assert other.isolation_chosen.mode == isolation.NAMESPACES


def test_nothing_possible_stops_only_what_needs_isolation(monkeypatch: pytest.MonkeyPatch,
                                                         entered: list[IdMaps]) -> None:
    environment(monkeypatch, isolation.Environment(0, 0, userns_errno=errno.EPERM))
    for command in sorted(rootless.ISOLATED):
        with pytest.raises(IsolationUnavailable):
            rootless.reenter(options(command))
    given = options("images")
    rootless.reenter(given)  # nothing to isolate: runs as it is
    assert entered == [] and not hasattr(given, "isolation_chosen")
