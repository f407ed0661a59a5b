"""Issue 15's proof, end to end: one Stepfile built for linux/amd64 and linux/arm64 on this
amd64 machine, the arm64 RUN under QEMU user emulation, pushed as an image index, pulled back
into an empty store with the same digests, and run by podman for linux/arm64.

The context is samples/multiarch with a busybox rootfs per architecture (the amd64 one from
busybox-static, the arm64 one from Debian's busybox-static:arm64 by
scripts/make-arm64-busybox-rootfs.sh). Its final stage's `RUN uname -m > /etc/built-on` runs
as each target: `x86_64` natively, `aarch64` emulated. podman runs the arm64 image through a
binfmt_misc entry with the F flag that this module registers in the host's table for the
test (a detached mount it holds; removed afterwards unless the host had it already).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stepbuild.oci.platform import Platform
from stepbuild.sandbox.binfmt import CONF_DIR, Registration, Table
from tests.integration import registry_fixture
from tests.integration.builds import EPOCH, PROJECT, Stepbuild, rootfs_tarball
from tests.integration.containers import ULIMITS, Podman
from tests.integration.registry_fixture import RunningRegistry

pytestmark = pytest.mark.root

ARM64_SCRIPT = PROJECT / "scripts" / "make-arm64-busybox-rootfs.sh"
PLATFORMS = "linux/amd64,linux/arm64"
plain_registry = registry_fixture.plain_registry


@pytest.fixture(scope="module", autouse=True)
def _amd64_machine() -> None:
    if Platform.host() != Platform.of("linux", "amd64"):
        pytest.fail("this test builds arm64 as the foreign platform: it needs an amd64 host")


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("multiplatform")
    directory = work / "multiarch"
    shutil.copytree(PROJECT / "samples" / "multiarch", directory)
    shutil.copy(rootfs_tarball(work), directory / "busybox-rootfs-amd64.tar")
    subprocess.run(["sh", str(ARM64_SCRIPT), str(directory / "busybox-rootfs-arm64.tar")],
                   check=True, capture_output=True, timeout=300)
    return directory


@pytest.fixture(scope="module")
def sb(tmp_path_factory: pytest.TempPathFactory, context: Path) -> Stepbuild:
    builder = Stepbuild(tmp_path_factory.mktemp("store") / "root")
    builder.build(context, "--platform", PLATFORMS, "-t", "multi", *EPOCH)
    return builder


def raw(reference: str) -> dict[str, Any]:
    done = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", reference],
                          capture_output=True, text=True, check=True, timeout=60)
    return dict(json.loads(done.stdout))


def platforms_of(index: dict[str, Any]) -> list[str]:
    return sorted(str(Platform.from_oci(m["platform"])) for m in index["manifests"])


def test_each_platform_ran_its_run_step_as_itself(sb: Stepbuild) -> None:
    assert sb.run("multi", "cat", "/etc/built-on") == "x86_64\n"  # the host's entry
    assert sb("run", "--platform", "linux/arm64", "multi", "cat",
              "/etc/built-on").stdout == "aarch64\n"
    assert sb("run", "--platform", "linux/arm64", "multi").stdout == (
        "hello from a AArch64 build (arm64), made on x86_64, running on aarch64\n")


def test_the_store_holds_an_index_of_two_manifests(sb: Stepbuild) -> None:
    index = raw(f"oci:{sb.root}:multi")
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert platforms_of(index) == ["linux/amd64", "linux/arm64"]


def test_pushed_and_pulled_back_with_the_same_digests(
        sb: Stepbuild, plain_registry: RunningRegistry, tmp_path: Path) -> None:
    ref = f"{plain_registry.host}/multi/app:1"
    pushed = sb("push", "--tls-verify=false", "multi", ref).stdout.strip()
    served = raw(f"docker://{ref}")
    assert served["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert platforms_of(served) == ["linux/amd64", "linux/arm64"]
    digests = {str(Platform.from_oci(m["platform"])): m["digest"] for m in served["manifests"]}
    copied = tmp_path / "copied"  # skopeo copies every platform of our index
    subprocess.run(["skopeo", "copy", "--all", "--src-tls-verify=false", f"docker://{ref}",
                    f"oci:{copied}:app"], check=True, capture_output=True, timeout=120)
    assert platforms_of(raw(f"oci:{copied}:app")) == ["linux/amd64", "linux/arm64"]

    fresh = Stepbuild(tmp_path / "fresh")
    pulled = fresh("pull", "--tls-verify=false", "--all-platforms", ref).stdout.strip()
    assert pulled == pushed  # the registry's digest, both ways
    # the store keeps layers uncompressed (its own manifests), and gives back exactly what
    # was pushed: pushed again from the fresh store, the index has the same digest
    assert platforms_of(raw(f"oci:{fresh.root}:{ref}")) == ["linux/amd64", "linux/arm64"]
    again = f"{plain_registry.host}/multi/again:1"
    assert fresh("push", "--tls-verify=false", ref, again).stdout.strip() == pushed
    arm64 = Stepbuild(tmp_path / "arm64-only")  # one platform: as `docker pull --platform`,
    one = arm64("pull", "--tls-verify=false", "--platform", "linux/arm64", ref)
    assert one.stdout.strip() == pushed  # the reference's digest (the index's) on stdout,
    assert f"pulled {ref}@{digests['linux/arm64']}" in one.stderr  # the image's in the log
    assert arm64("run", ref, "cat", "/etc/built-on").stdout == "aarch64\n"


def test_build_push_gives_the_registrys_index_digest(
        sb: Stepbuild, context: Path, plain_registry: RunningRegistry) -> None:
    ref = f"{plain_registry.host}/multi/built:1"
    built = sb.build(context, "--platform", PLATFORMS, "--push", "--tls-verify=false",
                     "-t", ref, *EPOCH)
    skopeo = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                             f"docker://{ref}"], capture_output=True, check=True, timeout=60)
    assert built.stdout.strip() == "sha256:" + hashlib.sha256(skopeo.stdout).hexdigest()


@pytest.fixture
def host_emulation() -> Iterator[None]:
    """qemu-aarch64 with F in the host's binfmt_misc table while the test runs (podman's
    runc execs the arm64 image through it); what the test added goes afterwards."""
    table = Table.open_own()
    assert table is not None, "root cannot open the host's binfmt_misc table"
    line = (Path(CONF_DIR) / "qemu-aarch64.conf").read_text().strip()
    registration = Registration.parse(line)
    assert registration is not None
    added = table.state(registration.name).entry is None
    try:
        if added:
            table.register(registration.with_fix_binary())
        yield
    finally:
        if added:
            fd = os.open(registration.name, os.O_WRONLY, dir_fd=table.dir_fd)
            try:
                os.write(fd, b"-1")
            finally:
                os.close(fd)
        table.close()


def test_podman_runs_the_pulled_arm64_image(sb: Stepbuild, podman: Podman,
                                           plain_registry: RunningRegistry, tmp_path: Path,
                                           host_emulation: None) -> None:
    ref = f"{plain_registry.host}/multi/podman:1"
    sb("push", "--tls-verify=false", "multi", ref)
    auth = tmp_path / "auth.json"  # podman wants the auth file it is given to exist
    auth.write_text('{"auths": {}}')
    ran = subprocess.run(podman.command("--runtime", "runc", "run", "--rm", "--network", "none",
                                        *ULIMITS, "--tls-verify=false", "--authfile", str(auth),
                                        "--platform", "linux/arm64", f"docker://{ref}",
                                        "sh", "-c", "uname -m; cat /etc/built-on"),
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "aarch64\naarch64\n"
