"""stepbuild as root inside an unprivileged `podman run` (issue 13): no CAP_SYS_ADMIN, podman's
seccomp profile, which allows user namespaces (`container_default`, tests/integration/
containers.py). stepbuild continues in a user namespace of its own, every id mapped to itself
(stepbuild/sandbox/isolation.py, userns.py), and builds the busybox sample of
test_rootless.py (RUN, COPY, COPY --chown, a multi-stage COPY --from, a cache mount, a secret,
a whiteout and an opaque dir) to the digest root gets on the host; runs the image; `check` is
clean. What it cannot do there is one line each: a store on the container's own overlay
root, the private network without a tun device. Family G (RUN isolation) for a step whose
/proc is the container's, bound.

Made here and removed at the end: the context and the secret (in pytest's tmp dirs), the
stores (host dirs bound at /store), the containers (tests/integration/conftest.py's session
fixtures).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.builds import EPOCH, Stepbuild, assert_clear_error, rootfs_tarball
from tests.integration.containers import Container, Volume
from tests.integration.test_rootless import STEPFILE

pytestmark = pytest.mark.root

TUN = "/dev/net/tun"
SECRET = "s3cret-token"
FIRST_LINE = "isolation: userns (root without CAP_SYS_ADMIN, every id mapped to itself)"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dir with `context/` (the sample) and `token` (the secret), bound into containers."""
    directory = tmp_path_factory.mktemp("in-container")
    context = directory / "context"
    context.mkdir()
    rootfs_tarball(context)
    (context / "Stepfile").write_text(STEPFILE)
    (context / "message.txt").write_text("built without root\n")
    (directory / "token").write_text(SECRET)
    return directory


def _volumes(sample: Path) -> list[Volume]:
    return [Volume(sample / "context", "/context"), Volume(sample / "token", "/token")]


def _build_args(*extra: str) -> tuple[str, ...]:
    return ("build", *EPOCH, "--secret", "id=token,src=/token", *extra, "/context")


def _store(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o755)  # a store refuses a root others may write to (security.md rule 12)
    return path


@pytest.fixture(scope="module")
def host_digest(sample: Path) -> str:
    """The digest root gets on the host, with a store of its own."""
    sb = Stepbuild(sample / "host-store")
    return sb.build(sample / "context", "-q", *EPOCH, "--secret",
                    f"id=token,src={sample / 'token'}", "-t", "app").stdout.strip()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The container's store, a volume as a CI pod's would be, shared by this module."""
    return _store(tmp_path_factory.mktemp("container-store") / "store")


@pytest.fixture(scope="module")
def built(container_default: Container, sample: Path,
          store: Path) -> subprocess.CompletedProcess[str]:
    """The sample built as root in the container, with -v, tagged `app`; a tun device given
    (`podman run --device`), so RUN steps get the private network."""
    return container_default.stepbuild(*_build_args("-v", "-t", "app"), store=store,
                                       volumes=_volumes(sample), devices=[TUN], timeout=300)


def _digest(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_root_in_the_container_gets_the_hosts_digest(
        built: subprocess.CompletedProcess[str], host_digest: str, store: Path) -> None:
    assert _digest(built) == host_digest
    first, second = built.stderr.splitlines()[:2]
    assert first == FIRST_LINE
    assert second.strip().startswith("namespaces unavailable: no CAP_SYS_ADMIN")  # -v: why
    # Seen from the host: every id is itself (COPY --chown=1000:1000 is 1000 here too), and
    # the opaque /root of the last RUN is in the xattr form overlay reads in a user namespace.
    owned = [d / "diff/app/owned.txt" for d in (store / "layers").iterdir()
             if (d / "diff/app/owned.txt").exists()]
    assert owned and all(path.stat().st_uid == 1000 for path in owned)
    opaque = [d / "diff/root" for d in (store / "layers").iterdir()
              if (d / "diff/root/new").exists()]
    assert opaque and os.getxattr(opaque[0], "user.overlay.opaque") == b"y"


def test_root_in_the_container_runs_the_image_and_check_is_clean(
        built: subprocess.CompletedProcess[str], container_default: Container,
        store: Path) -> None:
    assert built.returncode == 0, built.stderr
    ran = container_default.stepbuild("run", "app", store=store, devices=[TUN])
    assert (ran.returncode, ran.stdout) == (0, "made\n"), ran.stderr
    listing = container_default.stepbuild(
        "run", "--network", "none", "app", "sh", "-c",
        "ls -ln /app /app/tools; cat /app/token-length /app/runs; id -u", store=store)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.split("\n")
    owners = {line.split()[-1]: line.split()[2:4] for line in lines if line.count(" ") > 4}
    assert owners["owned.txt"] == ["1000", "1000"]
    assert owners["tool"] == ["7", "7"]
    assert lines[-4:] == ["12", "run", "0", ""]
    checked = container_default.stepbuild("check", "--deep", store=store)
    assert checked.returncode == 0 and "store is consistent" in checked.stdout, checked.stderr
    assert "store is consistent" in Stepbuild(store)("check").stdout  # and from the host


def test_a_step_sees_the_containers_processes_but_cannot_enter_them(
        built: subprocess.CompletedProcess[str], container_default: Container,
        store: Path) -> None:
    """A fresh /proc is refused in the user namespace (the container's own is partly
    masked), so the step's /proc is the container's, bound: it lists the container's
    processes (PID 1 is the stepbuild command that started it), but their roots stay out of
    reach: every one of them is either in the container's user namespace or holds
    capabilities the step lacks (ptrace access mode checks), so /proc/N/root does not lead
    to the container's files (its /store)."""
    assert built.returncode == 0, built.stderr
    script = ("tr '\\0' ' ' < /proc/1/cmdline; echo; "
              "for p in /proc/[0-9]*; do [ -e $p/root/store ] && echo reached $p; done; "
              "ls /proc/1/root/ 2>&1 >/dev/null | head -1")
    result = container_default.stepbuild("run", "--network", "none", "app", "sh", "-c", script,
                                         store=store)
    assert result.returncode == 0, result.stderr
    cmdline, *reached, refused = result.stdout.splitlines()
    assert "-m stepbuild run" in cmdline  # (this script is in it: check lines, not text)
    assert reached == []
    assert refused == "ls: /proc/1/root/: Permission denied"


def test_the_store_on_the_containers_overlay_root_is_one_line(
        container_default: Container, sample: Path) -> None:
    result = container_default.stepbuild("--root", "/var/lib/stepbuild", *_build_args(),
                                          store=None, volumes=_volumes(sample))
    assert_clear_error(result, 1, "overlayfs", "volume")
    first, error, hint = result.stderr.splitlines()
    assert first == FIRST_LINE  # the build's first line, then the refusal
    assert error == ("stepbuild: error: the store /var/lib/stepbuild is on overlayfs (a"
                     " container's own root?), where overlay cannot keep the changes of a step")
    assert hint.startswith("hint: put the store on a volume or a tmpfs")


def test_without_a_tun_device_the_private_network_is_one_line_and_none_builds(
        container_default: Container, sample: Path, host_digest: str,
        tmp_path: Path) -> None:
    """A pod has no /dev/net/tun unless given one: a RUN on the private network says what to
    do; `--network none` (the sample's RUNs need no network) builds the same image."""
    store = _store(tmp_path / "store")
    refused = container_default.stepbuild(*_build_args("-q"), store=store,
                                          volumes=_volumes(sample))
    assert_clear_error(refused, 1, f"needs {TUN}", f"--device {TUN}", "--network none")
    assert len(refused.stderr.splitlines()) == 2  # the error and its hint
    none = container_default.stepbuild(*_build_args("-q", "--network", "none"), store=store,
                                       volumes=_volumes(sample))
    assert _digest(none) == host_digest
    assert "store is consistent" in Stepbuild(store)("check").stdout
