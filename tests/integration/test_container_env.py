"""The unprivileged containers of issue 13 are what they claim (tests/integration/containers.py).

Root inside a default `podman run --runtime runc`: uid 0 without CAP_SYS_ADMIN, so no mount
and no mount namespace; podman's seccomp profile, under which a user namespace is allowed
(`container_default`), or that profile with user namespaces denied (`container_no_userns`).
This checkout and its Python work inside, and the store is a volume, not the container's
overlay root. Also what stepbuild does in them: builds in (a), through a user namespace of
its own; in (b), with chroot isolation, to the same image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.builds import (
    EPOCH,
    PROJECT,
    Stepbuild,
    assert_clear_error,
    rootfs_tarball,
    write_context,
)
from tests.integration.containers import (
    CLONE_NEWUSER,
    ENOSYS,
    EPERM,
    PODMAN_SECCOMP,
    Container,
    Podman,
    Volume,
    deny_user_namespaces,
)

pytestmark = pytest.mark.root

CAP_CHOWN, CAP_SYS_CHROOT, CAP_SYS_ADMIN = 0, 18, 21

VARIANTS = ["container_default", "container_no_userns"]


@pytest.fixture(params=VARIANTS)
def container(request: pytest.FixtureRequest) -> Container:
    """Each variant in turn."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded."""
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def status_fields(container: Container) -> dict[str, str]:
    text = ok(container.run(["cat", "/proc/self/status"]))
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def probe(container: Container, binary: Path, *calls: str) -> dict[str, int]:
    """The errno each syscall_probe call got inside (0: it worked)."""
    script = " && ".join(f"/probe {call}" for call in calls)
    out = ok(container.run(["sh", "-c", script], volumes=[Volume(binary, "/probe")]))
    return {name: int(errno) for name, errno in (line.split() for line in out.splitlines())}


# --- both variants: root, but no CAP_SYS_ADMIN ----------------------------------------------


def test_root_without_cap_sys_admin_under_seccomp(container: Container) -> None:
    assert ok(container.run(["id", "-u"])) == "0\n"
    fields = status_fields(container)
    effective, bounding = int(fields["CapEff"], 16), int(fields["CapBnd"], 16)
    assert not effective & (1 << CAP_SYS_ADMIN)
    assert not bounding & (1 << CAP_SYS_ADMIN)  # and it cannot be had back, but by a userns
    # What the chroot mode of issue 13 needs is there: chroot(2) and chown.
    assert effective & (1 << CAP_SYS_CHROOT) and effective & (1 << CAP_CHOWN)
    assert fields["Seccomp"] == "2"  # a filter, as the runtime's default profile


def test_no_mount_and_no_mount_namespace(container: Container) -> None:
    mount = container.run(["mount", "-t", "tmpfs", "tmpfs", "/tmp"])
    assert mount.returncode != 0
    assert "permission denied" in mount.stderr.lower(), mount.stderr
    unshare = container.run(["unshare", "--mount", "true"])
    assert unshare.returncode != 0
    assert "Operation not permitted" in unshare.stderr, unshare.stderr


def test_this_checkout_and_its_python_work_inside(container: Container) -> None:
    code = ("import sys, lark, requests, xxhash, zstandard, stepbuild; "
            "print(stepbuild.__file__); print(sys.version_info[:2])")
    out = ok(container.run([sys.executable, "-c", code])).splitlines()
    assert out == [str(PROJECT / "stepbuild" / "__init__.py"), str(sys.version_info[:2])]


def test_the_store_is_a_writable_volume_and_the_root_an_overlay(
        container: Container, container_store: Path) -> None:
    script = "echo data > /store/written && stat -f -c %T /store /"
    store_type, root_type = ok(container.run(["sh", "-c", script], store=container_store)).split()
    assert root_type == "overlayfs"  # as an image's root in a real pod
    assert store_type != "overlayfs"  # an overlay upper dir can live there
    written = container_store / "written"
    assert written.read_text() == "data\n"
    assert (written.stat().st_uid, written.stat().st_gid) == (0, 0)  # no user namespace


def test_only_what_is_bound_is_seen(container: Container) -> None:
    """The skeleton's entries and the first parts of the bound paths: not the host's root."""
    bound = {Path(volume.target).parts[1] for volume in container.binds}
    expected = sorted({*os.listdir(container.podman.skeleton), *bound})
    assert ok(container.run(["ls", "-A", "/"])).split() == expected
    assert sorted(os.listdir("/")) != expected  # the host has more: /home, /opt, /srv, ...


# --- (a) podman's default: a user namespace gives the capabilities back inside it -------------


def test_default_allows_a_user_namespace(container_default: Container,
                                         syscall_probe: Path) -> None:
    out = ok(container_default.run(["unshare", "--user", "--map-root-user", "sh", "-c",
                                    "id -u && grep ^CapEff: /proc/self/status"]))
    uid, cap_eff = out.split("\n", 1)
    assert uid == "0"
    assert int(cap_eff.split()[1], 16) & (1 << CAP_SYS_ADMIN)  # over the namespace's own
    assert probe(container_default, syscall_probe, "unshare_user", "clone_user") == {
        "unshare_user": 0, "clone_user": 0}


# --- (b) user namespaces denied as well ------------------------------------------------------


def test_no_userns_refuses_user_namespaces_with_eperm(container_no_userns: Container,
                                                      syscall_probe: Path) -> None:
    refused = container_no_userns.run(["unshare", "--user", "--map-root-user", "true"])
    assert refused.returncode != 0
    assert "Operation not permitted" in refused.stderr, refused.stderr
    assert probe(container_no_userns, syscall_probe, "unshare_user", "clone_user", "clone3",
                 "unshare_files", "fork") == {
        "unshare_user": EPERM, "clone_user": EPERM,
        "clone3": ENOSYS,  # refused whole: its flags are out of the filter's sight
        "unshare_files": 0, "fork": 0}  # namespace-free calls are allowed as before


def test_no_userns_still_starts_threads_and_processes(container_no_userns: Container) -> None:
    """glibc tries clone3 first for threads and posix_spawn; on ENOSYS it falls back to clone,
    which the profile allows without CLONE_NEWUSER."""
    code = ("import os, threading; seen = []; t = threading.Thread(target=seen.append, "
            "args=('thread',)); t.start(); t.join(); print(*seen, flush=True); "
            "pid = os.posix_spawn('/bin/echo', ['echo', 'child'], {}); "
            "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))")
    assert ok(container_no_userns.run([sys.executable, "-c", code])) == "thread\nchild\n0\n"


def test_the_derived_profile_changes_only_the_namespace_calls() -> None:
    podman_profile = json.loads(PODMAN_SECCOMP.read_text())
    derived = deny_user_namespaces(podman_profile)
    gated = {"unshare", "clone", "clone3"}

    def rules_without(profile: dict[str, Any], names: set[str]) -> list[dict[str, Any]]:
        kept = []
        for rule in profile["syscalls"]:
            rest = [name for name in rule["names"] if name not in names]
            if rest:
                kept.append({**rule, "names": rest})
        return kept

    assert rules_without(derived, gated) == rules_without(podman_profile, gated)
    assert {k: v for k, v in derived.items() if k != "syscalls"} == {
        k: v for k, v in podman_profile.items() if k != "syscalls"}
    new_user = [rule for rule in derived["syscalls"] if set(rule["names"]) & gated]
    assert [(rule["names"], rule["action"], rule.get("errnoRet"),
             [arg["valueTwo"] for arg in rule["args"]]) for rule in new_user] == [
        (["unshare", "clone"], "SCMP_ACT_ALLOW", None, [0]),
        (["unshare", "clone"], "SCMP_ACT_ERRNO", EPERM, [CLONE_NEWUSER]),
        (["clone3"], "SCMP_ACT_ERRNO", ENOSYS, []),
    ]


# --- cleanup ---------------------------------------------------------------------------------


def our_containers(podman: Podman) -> list[str]:
    listed = subprocess.run(podman.command("ps", "--all", "--format", "{{.Names}}"),
                            capture_output=True, text=True, check=True, timeout=60)
    return listed.stdout.split()


def test_containers_are_removed_after_a_run_and_a_timeout(container_default: Container,
                                                          podman: Podman) -> None:
    ok(container_default.run(["true"]))
    assert our_containers(podman) == []
    with pytest.raises(subprocess.TimeoutExpired):
        container_default.run(["sleep", "600"], timeout=2)
    assert our_containers(podman) == []


# --- stepbuild in them -----------------------------------------------------------------------


def test_stepbuild_builds_in_the_default_container(container_default: Container,
                                                   container_store: Path, tmp_path: Path) -> None:
    """FROM scratch + COPY, which stopped at the builder's mount namespace before issue 13:
    root continues in a user namespace of its own and builds (the whole sample, its digest
    and what it cannot do there: tests/integration/test_in_container.py)."""
    context = write_context(tmp_path / "context", "FROM scratch\nCOPY f /f\n", {"f": "hi\n"})
    result = container_default.stepbuild("build", "-t", "app", "/context",
                                         store=container_store,
                                         volumes=[Volume(context, "/context")])
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == ("isolation: userns (root without CAP_SYS_ADMIN,"
                                             " every id mapped to itself)")
    assert Stepbuild(container_store)("check").returncode == 0  # on the host: consistent
    assert any((container_store / "layers").iterdir())


CHROOT_STEPFILE = """\
FROM scratch AS tools
ADD busybox-rootfs.tar /
RUN mkdir -p /opt/tool && echo tool > /opt/tool/version && chown -R 7:7 /opt/tool
FROM scratch
ADD busybox-rootfs.tar /
ENV GREETING=hello
WORKDIR /app
COPY --chown=5:5 f ./f
COPY --from=tools /opt/tool /opt/tool
RUN echo "$GREETING from $(cat /opt/tool/version)" > /app/said && rm -f /bin/vi
"""


def test_stepbuild_without_user_namespaces_falls_back_to_chroot_and_builds_roots_image(
        container_no_userns: Container, container_store: Path, tmp_path: Path) -> None:
    """With user namespaces denied too, `--isolation=auto` takes chroot isolation, says so on
    the first line (and with -v why not the stronger modes), and builds the image root builds
    on the host, to the same digest; `--isolation=namespaces` there is one line."""
    context = write_context(tmp_path / "context", CHROOT_STEPFILE, {"f": "hi\n"})
    rootfs_tarball(context)
    volumes = [Volume(context, "/context")]
    result = container_no_userns.stepbuild("build", *EPOCH, "-v", "-t", "app", "/context",
                                           store=container_store, volumes=volumes, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "isolation: chroot"
    assert any("namespaces unavailable: no CAP_SYS_ADMIN" in line for line in lines[1:3])
    assert any("userns unavailable: user namespaces are refused" in line for line in lines[1:3])
    host = Stepbuild(tmp_path / "host-store").build(context, "-q", *EPOCH, "-t", "app")
    assert result.stdout.strip().splitlines()[-1] == host.stdout.strip()
    said = container_no_userns.stepbuild("run", "app", "cat", "/app/said",
                                         store=container_store)
    assert said.stdout == "hello from tool\n", said.stderr
    assert Stepbuild(container_store)("check").returncode == 0  # on the host: consistent
    refused = container_no_userns.stepbuild("build", "--isolation=namespaces", "/context",
                                            store=container_store, volumes=volumes)
    assert_clear_error(refused, 1, "--isolation=namespaces is not possible here",
                       "CAP_SYS_ADMIN")
    assert len(refused.stderr.splitlines()) == 2  # the error and its hint
