"""Emulated RUN, for real: an arm64 busybox image (scripts/make-arm64-busybox-rootfs.sh, its
config's architecture set to arm64 through the store) runs `uname -m` under Debian's
qemu-user-static on this amd64 machine — `stepbuild run`, a RUN step, each isolation mode —
with binfmt_misc registered on demand by stepbuild/sandbox/binfmt.py (it is not mounted and
nothing is registered on a fresh machine).

Root tests register in the host's table (the kernel's, for the initial user namespace), in a
detached mount the builder holds: the entry goes with the builder unless the host has
binfmt_misc mounted itself (then it stays, as docs/security.md says). The refusal test
registers a dummy entry of its own (a unique name and magic no file has) and removes it; the
rootless test checks the host's table is unchanged while a normal user's build registers in
its user namespace. Needs an amd64 machine (the image must be foreign).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from stepbuild.oci.platform import Platform
from stepbuild.sandbox.binfmt import Registration, Table
from stepbuild.store.store import Store
from tests.integration import test_rootless
from tests.integration.builds import PROJECT, Stepbuild, assert_clear_error, write_context
from tests.integration.containers import Container, Volume
from tests.integration.test_rootless import User

ARM64_SCRIPT = PROJECT / "scripts" / "make-arm64-busybox-rootfs.sh"
QEMU = "/usr/bin/qemu-aarch64-static"
BASE = "FROM scratch\nADD arm64-busybox-rootfs.tar /\nENV PATH=/bin:/usr/bin:/sbin:/usr/sbin\n"
STEP = "FROM --platform=linux/arm64 {base}\nRUN uname -m > /m && busybox uname -m\n"

shared_dir = test_rootless.shared_dir
user_python = test_rootless.user_python
ranged = test_rootless.ranged
open_tun = test_rootless.open_tun


@pytest.fixture(scope="session", autouse=True)
def _amd64_machine() -> None:
    if Platform.host().architecture != "amd64":
        pytest.fail("these tests emulate arm64 and expect an amd64 machine")


@pytest.fixture(scope="session")
def arm64_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The arm64 busybox rootfs tarball, made by the project's script."""
    tarball = tmp_path_factory.mktemp("arm64") / "arm64-busybox-rootfs.tar"
    subprocess.run(["sh", str(ARM64_SCRIPT), str(tarball)], check=True)
    return tarball


def base_context(context: Path, rootfs: Path) -> Path:
    """FROM scratch + ADD of the arm64 rootfs: no RUN, nothing to emulate."""
    write_context(context, BASE)
    (context / rootfs.name).write_bytes(rootfs.read_bytes())
    return context


def make_arm64_image(sb: Stepbuild, context: Path, rootfs: Path, *flags: str) -> str:
    """Build `base_context`, then tag `arm64` the same image with its config saying
    linux/arm64. Returns "arm64"."""
    sb.build(base_context(context, rootfs), "-q", "-t", "arm64-unmarked", *flags)
    return mark_arm64(sb.root)


def mark_arm64(root: Path) -> str:
    """Tag `arm64` the image `arm64-unmarked` of the store at `root`, its config saying
    linux/arm64 (as `build --platform` will)."""
    store = Store(root)
    descriptor = store.resolve("arm64-unmarked")
    assert descriptor is not None
    manifest = store.manifest(descriptor)
    config = replace(store.config(manifest), architecture="arm64", variant="")
    store.tag("arm64", store.put_image(config, manifest.layers,
                                       dict(manifest.annotations or {})))
    return "arm64"


@pytest.fixture(scope="module")
def rootful(tmp_path_factory: pytest.TempPathFactory, arm64_rootfs: Path) -> Stepbuild:
    """A root store (namespaces isolation) holding `arm64`."""
    work = tmp_path_factory.mktemp("emulation")
    sb = Stepbuild(work / "store")
    make_arm64_image(sb, work / "base", arm64_rootfs)
    return sb


@pytest.fixture(scope="module")
def userns_store(tmp_path_factory: pytest.TempPathFactory, arm64_rootfs: Path) -> Stepbuild:
    """A store of root's for --isolation=userns (its layers carry user.overlay.* xattrs)."""
    work = tmp_path_factory.mktemp("emulation-userns")
    sb = Stepbuild(work / "store")
    make_arm64_image(sb, work / "base", arm64_rootfs, "--isolation=userns")
    return sb


def test_the_image_is_arm64_and_this_machine_is_not(rootful: Stepbuild) -> None:
    assert '"architecture": "arm64"' in rootful("inspect", "arm64").stdout
    assert os.uname().machine == "x86_64"


def test_run_of_an_arm64_image_prints_aarch64(rootful: Stepbuild) -> None:
    assert rootful.run("arm64", "uname", "-m") == "aarch64\n"


def test_a_run_step_on_an_arm64_image_runs_emulated(rootful: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", STEP.format(base="arm64"))
    result = rootful.build(context, "-t", "stepped")
    assert "aarch64" in result.stderr  # the step's own output
    assert rootful.run("stepped", "cat", "/m") == "aarch64\n"
    assert '"architecture": "arm64"' in rootful("inspect", "stepped").stdout


def test_chroot_isolation_runs_it_too(rootful: Stepbuild, tmp_path: Path) -> None:
    """Root with CAP_SYS_ADMIN may register even for chrooted steps."""
    context = write_context(tmp_path / "ctx", STEP.format(base="arm64"))
    rootful.build(context, "--isolation=chroot", "-t", "chrooted")
    assert rootful.run("chrooted", "cat", "/m") == "aarch64\n"


def test_userns_isolation_registers_in_its_own_namespace(userns_store: Stepbuild,
                                                         tmp_path: Path) -> None:
    assert userns_store("run", "--isolation=userns", "arm64", "uname", "-m").stdout \
        == "aarch64\n"
    context = write_context(tmp_path / "ctx", STEP.format(base="arm64"))
    userns_store.build(context, "--isolation=userns", "-t", "stepped")
    assert userns_store("run", "--isolation=userns", "stepped", "cat", "/m").stdout \
        == "aarch64\n"


def test_the_registration_goes_with_the_builder_unless_the_host_mounts_binfmt_misc(
        rootful: Stepbuild) -> None:
    assert rootful.run("arm64", "true") == ""
    visible = Table.open_visible()
    table = Table.open_own()  # the host's table, as it is once the builder has gone
    assert table is not None
    try:
        entry = table.state("qemu-aarch64").entry
        if visible is None:  # nobody else holds the table: ours went with the builder
            assert entry is None
        else:  # the host's mount keeps it: registered with F, as docs/security.md says
            visible.close()
            assert entry is not None and "F" in entry.flags
    finally:
        table.close()


def test_missing_qemu_is_one_line_naming_the_package(userns_store: Stepbuild,
                                                     tmp_path: Path) -> None:
    """In a user namespace the table is new, so only the (empty) conf dir decides."""
    empty = tmp_path / "no-binfmt-d"
    empty.mkdir()
    result = userns_store("run", "--isolation=userns", "arm64", "uname", "-m", check=False,
                          env={"STEPBUILD_BINFMT_DIR": str(empty)})
    assert_clear_error(result, 1, "cannot run linux/arm64 steps here: no QEMU for arm64",
                       "hint: apt-get install qemu-user-static")
    assert len(result.stderr.strip().splitlines()) == 2


@pytest.fixture
def entry_without_f(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A dummy entry in the host's table without F (a unique name, a magic no file starts
    with), and a conf dir whose qemu-aarch64.conf names it; both gone afterwards."""
    name = f"stepbuild-test-{uuid.uuid4().hex[:12]}"
    magic = f"\\x7fSBTEST{uuid.uuid4().hex}"
    table = Table.open_own()
    assert table is not None, "root with CAP_SYS_ADMIN opens the host's binfmt_misc"
    table.register(Registration(name, "M", "", magic, "", QEMU, "OC"))
    confs = tmp_path / "binfmt.d"
    confs.mkdir()
    (confs / "qemu-aarch64.conf").write_text(f":{name}:M::{magic}::{QEMU}:F\n")
    try:
        yield name, confs
    finally:
        fd = os.open(name, os.O_WRONLY, dir_fd=table.dir_fd)
        try:
            os.write(fd, b"-1")  # remove it (it stays if the host has binfmt_misc mounted)
        finally:
            os.close(fd)
        table.close()


def test_a_host_entry_without_f_is_refused_and_left_alone(
        rootful: Stepbuild, entry_without_f: tuple[str, Path]) -> None:
    name, confs = entry_without_f
    result = rootful("run", "arm64", "uname", "-m", check=False,
                     env={"STEPBUILD_BINFMT_DIR": str(confs)})
    assert_clear_error(result, 1, "cannot run linux/arm64 steps here:",
                       f"binfmt_misc entry {name} has no F (fix-binary) flag",
                       f"update-binfmts --disable {name}",
                       f"echo -1 > /proc/sys/fs/binfmt_misc/{name}")
    assert len(result.stderr.strip().splitlines()) == 2
    table = Table.open_own()
    assert table is not None
    try:
        entry = table.state(name).entry
        assert entry is not None and entry.flags == "OC"  # not changed behind the host's back
    finally:
        table.close()


# --- rootless ----------------------------------------------------------------------------------


def _table_listing(table: Table) -> dict[str, str]:
    listing = {}
    for name in os.listdir(table.dir_fd):
        if name != "register":
            fd = os.open(name, os.O_RDONLY, dir_fd=table.dir_fd)
            with os.fdopen(fd) as f:
                listing[name] = f.read()
    return listing


@pytest.fixture(scope="module")
def arm64_archive(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path,
                  arm64_rootfs: Path) -> Path:
    """The arm64 image as an OCI archive any user may read."""
    work = tmp_path_factory.mktemp("emulation-archive")
    sb = Stepbuild(work / "store")
    make_arm64_image(sb, work / "base", arm64_rootfs)
    archive = shared_dir / "arm64.tar"
    sb("export", "arm64", "-o", f"type=oci,dest={archive}")
    archive.chmod(0o644)
    return archive


def test_rootless_registers_in_its_user_namespace_and_not_the_hosts(
        ranged: User, arm64_archive: Path, open_tun: None, shared_dir: Path) -> None:
    context = shared_dir / "emulation-context"
    write_context(context, STEP.format(base=f"oci-archive:{arm64_archive}"))
    subprocess.run(["chmod", "-R", "a+rX", str(context)], check=True)
    host = Table.open_own()  # held open: whatever the build registered there would stay
    assert host is not None
    try:
        before = _table_listing(host)
        ranged("build", "-t", "emulated", str(context))
        assert ranged("run", "emulated", "cat", "/m").stdout == "aarch64\n"
        assert ranged("run", "emulated", "uname", "-m").stdout == "aarch64\n"
        assert _table_listing(host) == before
    finally:
        host.close()


# --- the unprivileged CI pod (tests/integration/containers.py) ---------------------------------


def _container_arm64(container: Container, store: Path, context: Path) -> None:
    """`arm64` in the container's store, built inside (no RUN), marked from the host."""
    built = container.stepbuild("build", "-q", "-t", "arm64-unmarked", "/ctx", store=store,
                                volumes=[Volume(context, "/ctx")])
    assert built.returncode == 0, built.stderr
    mark_arm64(store)


def test_in_the_default_ci_pod_the_builders_user_namespace_registers(
        container_default: Container, container_store: Path, arm64_rootfs: Path,
        tmp_path: Path) -> None:
    """Root without CAP_SYS_ADMIN takes userns isolation: its own table, no host set-up."""
    context = base_context(tmp_path / "ctx", arm64_rootfs)
    _container_arm64(container_default, container_store, context)
    result = container_default.stepbuild("run", "--network", "none", "arm64", "uname", "-m",
                                         store=container_store)
    assert (result.returncode, result.stdout) == (0, "aarch64\n"), result.stderr


def test_chroot_isolation_without_cap_sys_admin_is_one_line_naming_the_hosts_fix(
        container_no_userns: Container, container_store: Path, arm64_rootfs: Path,
        tmp_path: Path) -> None:
    """No user namespace, no CAP_SYS_ADMIN, no binfmt_misc visible: nothing to use."""
    context = base_context(tmp_path / "ctx", arm64_rootfs)
    _container_arm64(container_no_userns, container_store, context)
    result = container_no_userns.stepbuild("run", "arm64", "uname", "-m",
                                           store=container_store)
    assert_clear_error(result, 1, "cannot run linux/arm64 steps here: binfmt_misc is not"
                       " mounted here, and registering it needs CAP_SYS_ADMIN",
                       "update-binfmts --enable qemu-aarch64",
                       "-v /proc/sys/fs/binfmt_misc:/proc/sys/fs/binfmt_misc:ro")
    assert len(result.stderr.strip().splitlines()) == 2
