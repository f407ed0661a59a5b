"""stepbuild.sandbox for real: overlay mounts, namespaces, pivot_root, the isolation a RUN step
gets (docs/security.md rule 8, family G), and that nothing leaks to the host."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from stepbuild.errors import SandboxError
from stepbuild.sandbox import Mount, RunResult, SandboxSpec, host, run
from stepbuild.sandbox.spec import MASKED_PATHS

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("private_mount_ns")]

PROJECT = Path(__file__).resolve().parents[2]
DOCKER_CAPS = "00000000a80425fb"


@pytest.fixture(scope="module", autouse=True)
def host_sees_no_mount_of_ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After all these tests no mount under our temp dirs is left: not in our own mount
    namespace (every overlay was unmounted, every sandbox's mounts died with it), and none
    ever reached the host's (PID 1's table)."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    fresh = subprocess.run(["cat", "/proc/self/mountinfo"], capture_output=True, text=True)
    assert fresh.returncode == 0 and base not in fresh.stdout
    assert base not in Path("/proc/1/mountinfo").read_text()


@dataclass(frozen=True)
class Step:
    """One step's overlay (busybox lower, fresh upper), mounted in pytest's private mount ns."""

    merged: Path
    upper: Path
    etc: Path

    def spec(self, *argv: str, **kw: object) -> SandboxSpec:
        base = SandboxSpec(rootfs=str(self.merged), argv=argv, env=("PATH=/bin",), cwd="/",
                           hostname="box", etc_dir=str(self.etc))
        return replace(base, **kw)  # type: ignore[arg-type]

    def sh(self, script: str, **kw: object) -> tuple[RunResult, str]:
        chunks: list[bytes] = []
        result = run(self.spec("sh", "-c", script, **kw), on_output=chunks.append)
        return result, b"".join(chunks).decode()


@pytest.fixture
def step(tmp_path: Path, busybox_rootfs: Path) -> Iterator[Step]:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hosts").write_text("127.0.0.1 localhost box\n")
    (tmp_path / "etc" / "resolv.conf").write_text("nameserver 192.0.2.53\n")
    (tmp_path / "etc" / "hostname").write_text("box\n")
    with host.mounted(tmp_path, [busybox_rootfs]) as merged:
        yield Step(merged, tmp_path / "upper", tmp_path / "etc")


# -- exit status and output ------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "code"), [
    (("true",), 0), (("false",), 1), (("sh", "-c", "exit 7"), 7),
    (("sh", "-c", "echo E; echo R >&2; exit 1"), 1),  # looks like status records: is not
])
def test_exit_status_is_the_commands(step: Step, argv: tuple[str, ...], code: int) -> None:
    assert run(step.spec(*argv)).exit_code == code


def test_killed_by_a_signal_is_128_plus_n(step: Step) -> None:
    # PID 1 of a namespace only dies of signals it has no handler for when they come from an
    # ancestor namespace, and then only SIGKILL/SIGSTOP (pid_namespaces(7)): send it from here
    cmdline = f"sleep\x009.{os.getpid()}\x00".encode()

    def kill_sleeper(_: bytes) -> None:
        _wait_for(lambda: _processes(cmdline))  # "started" comes just before the exec
        for pid in _processes(cmdline):
            os.kill(pid, signal.SIGKILL)

    result = run(step.spec("sh", "-c", f"echo started; exec sleep 9.{os.getpid()}"),
                 on_output=kill_sleeper)
    assert result.exit_code == 128 + signal.SIGKILL


@pytest.mark.parametrize(("argv", "err"), [
    (("no-such-program",), errno.ENOENT), (("/no/such/path",), errno.ENOENT),
    (("/etc/passwd",), errno.EACCES),
])
def test_unrunnable_program_is_a_sandbox_error(step: Step, argv: tuple[str, ...],
                                               err: int) -> None:
    with pytest.raises(SandboxError) as info:
        run(step.spec(*argv))
    assert (info.value.op, info.value.errno) == (f"exec {argv[0]}", err)


def test_output_is_streamed_and_tail_kept(step: Step) -> None:
    seen: list[tuple[float, bytes]] = []
    result = run(step.spec("sh", "-c", "echo first; echo to-stderr >&2; sleep 0.3; seq 1 40"),
                 on_output=lambda b: seen.append((time.monotonic(), b)))
    text = b"".join(b for _, b in seen).decode()
    assert text.startswith("first\nto-stderr\n") and text.endswith("40\n")
    first_at = next(t for t, b in seen if b"first" in b)
    assert seen[-1][0] - first_at > 0.2  # "first" arrived while the command still ran
    assert result.output_tail == tuple(str(i) for i in range(21, 41))


def test_background_processes_die_with_the_command(step: Step) -> None:
    # they hold the output pipe open; the PID namespace dies with its PID 1, so run() returns
    started = time.monotonic()
    result, out = step.sh("sleep 30 & echo done")
    assert (result.exit_code, out) == (0, "done\n")
    assert time.monotonic() - started < 5


def test_large_output_streams_through(step: Step) -> None:
    result, out = step.sh("head -c 3000000 /dev/zero | tr '\\0' x; echo; echo end")
    assert len(out) == 3000000 + 5 and result.output_tail[-1] == "end"


def test_output_callback_error_kills_the_step(step: Step) -> None:
    def explode(_: bytes) -> None:
        raise RuntimeError("progress display broke")

    cmdline = f"sleep\x008.{os.getpid()}\x00".encode()
    with pytest.raises(RuntimeError):
        run(step.spec("sh", "-c", f"echo hi; sleep 8.{os.getpid()}"), on_output=explode)
    assert _wait_for(lambda: not _processes(cmdline))


def test_signals_are_default_and_unblocked(step: Step) -> None:
    # exec'd directly: busybox sh itself ignores SIGQUIT in the commands it forks
    chunks: list[bytes] = []
    run(step.spec("grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"), on_output=chunks.append)
    assert b"".join(chunks).split() == [b"SigBlk:", b"0" * 16, b"SigIgn:", b"0" * 16]


# -- namespaces, root, hostname --------------------------------------------------------------


def test_command_is_pid_1_with_hostname_and_etc_files(step: Step) -> None:
    _, out = step.sh("echo $$; hostname; cat /etc/resolv.conf", hostname="box-7")
    assert out.split() == ["1", "box-7", "nameserver", "192.0.2.53"]


def test_old_root_is_detached(step: Step, tmp_path: Path) -> None:
    _, out = step.sh("cat /proc/self/mountinfo")
    mounts = [line.split() for line in out.splitlines()]
    points = [m[4] for m in mounts]
    assert [m[m.index("-") + 1] for m in mounts if m[4] == "/"] == ["overlay"]
    assert not [p for p in points if str(tmp_path) in p or p.startswith(("/work", "/root/"))]
    assert len(points) == len(set(points))  # nothing stacked: no second root underneath
    # the host's root filesystem appears only as the source of the bound /etc files
    host_root = next(line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                     if line.split()[4] == "/").split()[2]
    assert {m[4] for m in mounts if m[2] == host_root} <= {"/etc/hosts", "/etc/resolv.conf",
                                                           "/etc/hostname"}


def test_writes_land_in_upper_but_not_etc_or_dev(step: Step) -> None:
    result, _ = step.sh("echo new > /new && echo 10.0.0.1 extra >> /etc/hosts && "
                        "touch /dev/junk /dev/shm/junk && mkdir /tmp/made")
    assert result.exit_code == 0
    assert sorted(os.listdir(step.upper)) == ["new", "tmp"]
    assert os.listdir(step.upper / "tmp") == ["made"]
    assert "extra" in (step.etc / "hosts").read_text()


def test_missing_etc_file_is_skipped_not_created(tmp_path: Path, busybox_rootfs: Path,
                                                 step: Step) -> None:
    # busybox_rootfs has no /etc/hostname: no stub may be left behind in the upper dir
    result, out = step.sh("cat /etc/hostname")
    assert result.exit_code != 0 and "No such file" in out
    assert any("/etc/hostname" in n for n in result.notices)
    assert not (step.upper / "etc").exists()


def test_workdir_is_created_as_root_and_entered(step: Step) -> None:
    result, out = step.sh("pwd; id -u", cwd="/srv/app/sub", uid=1000, gid=1000)
    assert (result.exit_code, out.split()) == (0, ["/srv/app/sub", "1000"])
    made = step.upper / "srv/app/sub"
    assert made.is_dir() and made.stat().st_uid == 0 and made.stat().st_mode & 0o777 == 0o755


def test_workdir_that_is_a_file_is_a_sandbox_error(step: Step) -> None:
    with pytest.raises(SandboxError) as info:
        step.sh("true", cwd="/etc/passwd")
    assert info.value.op == "create workdir /etc/passwd"


# -- isolation (docs/security.md rule 8) -----------------------------------------------------------


def test_block_device_made_by_mknod_cannot_be_opened(step: Step) -> None:
    disk = os.stat("/").st_dev  # the host's root disk: readable if nodev were missing
    major, minor = os.major(disk), os.minor(disk)
    for where in ("/tmp/disk", "/dev/disk", "/dev/shm/disk"):
        result, out = step.sh(f"mknod {where} b {major} {minor} && head -c1 {where}")
        assert result.exit_code != 0, where
        assert "Permission denied" in out, (where, out)


def test_proc_sys_and_sysrq_are_read_only(step: Step) -> None:
    for path in ("/proc/sys/kernel/hostname", "/proc/sys/kernel/core_pattern",
                 "/proc/sysrq-trigger", "/proc/irq/default_smp_affinity"):
        if not os.path.exists(path):  # no sysrq-trigger without CONFIG_MAGIC_SYSRQ
            continue
        result, out = step.sh(f"echo x > {path}")
        assert result.exit_code != 0 and "Read-only file system" in out, path
    _, out = step.sh("touch /sys/x")
    assert "Read-only file system" in out


def test_masked_paths_are_empty(step: Step) -> None:
    present = [p for p in MASKED_PATHS if os.path.exists(p)]
    assert "/proc/keys" in present  # at least something to check on this kernel
    for path in present:
        kind = "dir" if os.path.isdir(path) else "file"
        check = f"ls -A {path} | wc -l" if kind == "dir" else f"wc -c < {path}"
        result, out = step.sh(check)
        assert (result.exit_code, out.strip()) == (0, "0"), path


def test_no_fd_of_the_builder_leaks(step: Step, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "secret", os.O_CREAT | os.O_RDWR)
    high = os.dup2(fd, 57, inheritable=True)
    try:
        _, out = step.sh("ls /proc/self/fd")
    finally:
        os.close(fd)
        os.close(high)
    assert set(out.split()) <= {"0", "1", "2", "3"}  # 3 is ls's own directory fd


def test_root_gets_dockers_default_capabilities(step: Step) -> None:
    _, out = step.sh("grep ^Cap /proc/self/status")
    caps = dict(line.split(":\t") for line in out.splitlines())
    assert caps == {"CapInh": "0" * 16, "CapPrm": DOCKER_CAPS, "CapEff": DOCKER_CAPS,
                    "CapBnd": DOCKER_CAPS, "CapAmb": "0" * 16}


def test_user_switch_drops_capabilities(step: Step) -> None:
    result, out = step.sh("id -u; id -g; id -G; grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status",
                          uid=1000, gid=1001, groups=(1001, 2000))
    assert result.exit_code == 0
    assert out.split() == ["1000", "1001", "1001", "2000", "CapPrm:", "0" * 16,
                           "CapEff:", "0" * 16, "CapBnd:", DOCKER_CAPS]


def test_network_none_has_only_loopback_up(step: Step) -> None:
    _, out = step.sh("cat /proc/net/dev; cat /sys/class/net/lo/flags", network="none")
    assert re.findall(r"^\s*(\w+):", out, re.M) == ["lo"]
    assert int(out.split()[-1], 16) & 0x1  # IFF_UP


def test_network_host_shares_the_hosts_interfaces(step: Step) -> None:
    _, out = step.sh("ls /sys/class/net")
    assert set(out.split()) == set(os.listdir("/sys/class/net"))


# -- mounts -----------------------------------------------------------------------------------


def test_extra_mounts_tmpfs_and_readonly_bind(step: Step, tmp_path: Path) -> None:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "file").write_text("from context\n")
    mounts = (Mount("tmpfs", "", "/tmp", options="size=1m"),
              Mount("bind", str(tmp_path / "ctx"), "/root", readonly=True))
    result, out = step.sh("touch /tmp/scratch && cat /root/file && touch /root/no",
                          mounts=mounts)
    assert result.exit_code != 0
    assert "from context" in out and "Read-only file system" in out
    assert not (step.upper / "tmp").exists() and os.listdir(tmp_path / "ctx") == ["file"]


def test_missing_mount_target_is_a_sandbox_error(step: Step) -> None:
    with pytest.raises(SandboxError) as info:
        step.sh("true", mounts=(Mount("tmpfs", "", "/nowhere"),))
    assert (info.value.op, info.value.errno) == ("mount tmpfs /nowhere", errno.ENOENT)


def test_image_symlinks_cannot_aim_mounts_at_the_host(step: Step, tmp_path: Path) -> None:
    # the image's /cache points at a host directory: resolved inside the root it is missing,
    # so create=dir fails there instead of making a directory on the host
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    (step.merged / "cache").symlink_to(host_dir)
    with pytest.raises(SandboxError) as info:
        step.sh("true", mounts=(Mount("tmpfs", "", "/cache/x", options="create=dir"),))
    assert info.value.errno == errno.ENOENT
    assert os.listdir(host_dir) == []


def test_two_hundred_lower_dirs(tmp_path: Path, busybox_rootfs: Path) -> None:
    lowers = []
    for i in range(200):
        d = tmp_path / "layers" / f"{i:03}"
        (d / "many").mkdir(parents=True)
        (d / "many" / f"f{i:03}").write_text(str(i))
        lowers.append(d)
    with host.mounted(tmp_path, [*reversed(lowers), busybox_rootfs]) as merged:
        assert len(os.listdir(merged / "many")) == 200
        chunks: list[bytes] = []
        spec = SandboxSpec(rootfs=str(merged), argv=("sh", "-c", "ls /many | wc -l"),
                           env=("PATH=/bin",), cwd="/")
        assert run(spec, on_output=chunks.append).exit_code == 0
        assert b"".join(chunks).strip() == b"200"


def test_read_only_overlays(tmp_path: Path, busybox_rootfs: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "extra").write_text("x")
    for lowers in ([other, busybox_rootfs], [busybox_rootfs]):  # one lower: a read-only bind
        with host.mounted_readonly(tmp_path / f"ro{len(lowers)}", lowers) as merged:
            assert (merged / "bin" / "busybox").is_file()
            with pytest.raises(OSError) as info:
                (merged / "new").write_text("x")
            assert info.value.errno == errno.EROFS


def test_overlay_error_names_the_target(tmp_path: Path) -> None:
    with pytest.raises(OSError) as info, host.mounted(tmp_path, [tmp_path / "missing"]):
        pass
    assert info.value.errno == errno.ENOENT
    assert f"mount overlay {tmp_path / 'merged'}" in str(info.value)


# -- the builder's own mounts (sandbox.host) --------------------------------------------------


def _mount_options(target: Path) -> list[str]:
    """The per-mount options of what is mounted on `target` ([] if nothing is)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(target):
            return fields[5].split(",")
    return []


def test_bind_mounted_binds_what_the_fd_is_not_what_the_path_became(tmp_path: Path) -> None:
    source, moved = tmp_path / "source", tmp_path / "moved"
    source.mkdir()
    (source / "f").write_text("x")
    (tmp_path / "file").write_text("a file")
    target, file_target = tmp_path / "target", tmp_path / "file-target"
    target.mkdir()
    file_target.touch()
    fd = os.open(source, os.O_PATH | os.O_DIRECTORY)
    file_fd = os.open(tmp_path / "file", os.O_PATH)
    try:
        source.rename(moved)
        source.symlink_to("/etc")  # what the path names now: not followed
        with host.bind_mounted(fd, target), host.bind_mounted(file_fd, file_target):
            assert os.listdir(target) == ["f"] and file_target.read_text() == "a file"
    finally:
        os.close(fd)
        os.close(file_fd)
    assert os.listdir(target) == [] and file_target.read_text() == ""  # unmounted


def test_tmpfs_mounted_holds_data_only_within_its_size(tmp_path: Path) -> None:
    target = tmp_path / "secrets"
    target.mkdir()
    with host.tmpfs_mounted(target, size=64 * 1024, mode=0o700) as mounted:
        assert mounted == target and target.stat().st_mode & 0o7777 == 0o700
        assert {"nodev", "nosuid", "noexec"} <= set(_mount_options(target))
        with pytest.raises(OSError) as info:
            (target / "big").write_bytes(b"x" * 128 * 1024)
        assert info.value.errno == errno.ENOSPC
    assert _mount_options(target) == [] and os.listdir(target) == []  # gone with its data


# -- nothing leaks -----------------------------------------------------------------------------


def test_mounts_stay_in_private_namespaces(step: Step, tmp_path: Path) -> None:
    own_before = Path("/proc/self/mountinfo").read_text()
    step.sh("true")
    assert Path("/proc/self/mountinfo").read_text() == own_before  # the child's are gone
    assert str(tmp_path) in own_before  # our overlay is mounted here ...
    assert str(tmp_path) not in Path("/proc/1/mountinfo").read_text()  # ... not on the host


def test_killing_the_builder_kills_the_step(tmp_path: Path, busybox_rootfs: Path) -> None:
    # a separate builder process, killed with SIGKILL while its step sleeps
    sleep = f"7.{os.getpid()}"  # unique to this test run
    script = f"""
import sys
from stepbuild.sandbox import SandboxSpec, linux, run
linux.enter_private_mount_namespace()
merged = {str(tmp_path / "merged")!r}
linux.mount_overlay(merged, [{str(busybox_rootfs)!r}], {str(tmp_path / "up")!r},
                    {str(tmp_path / "work")!r})
def out(b):
    sys.stdout.buffer.write(b); sys.stdout.flush()
run(SandboxSpec(rootfs=merged, argv=("sh", "-c", "echo $PPID started; exec sleep {sleep}"),
                env=("PATH=/bin",), cwd="/"), on_output=out)
"""
    for d in ("merged", "up", "work"):
        (tmp_path / d).mkdir()
    cmdline = f"sleep\x00{sleep}\x00".encode()
    builder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               cwd=PROJECT, env={"PYTHONPATH": str(PROJECT)})
    try:
        assert builder.stdout is not None
        assert builder.stdout.readline().split() == [b"0", b"started"]
        assert _wait_for(lambda: _processes(cmdline)), "the step is running"
    finally:
        builder.kill()
        builder.wait()
    assert _wait_for(lambda: not _processes(cmdline)), "the step died with the builder"
    assert str(tmp_path) not in Path("/proc/1/mountinfo").read_text()


def _wait_for(condition: Callable[[], object], timeout: float = 3) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _processes(cmdline: bytes) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes() == cmdline:
                found.append(int(pid))
        except OSError:
            pass
    return found


def test_chroot_fallback_where_pivot_root_is_refused(tmp_path: Path,
                                                     busybox_rootfs: Path) -> None:
    # pivot_root(2) fails with EINVAL when the caller's root is not a mount point. Give a
    # builder such a root: a plain directory holding binds of every top-level host directory.
    script = f"""
import os
from stepbuild.sandbox import SandboxSpec, linux, run
linux.enter_private_mount_namespace()
t = {str(tmp_path)!r}
linux.mount_overlay(t + "/merged", [{str(busybox_rootfs)!r}], t + "/up", t + "/work")
for name in os.listdir("/"):
    if os.path.isdir("/" + name) and not os.path.islink("/" + name):
        os.mkdir(t + "/ch/" + name)
        linux.bind_mount("/" + name, t + "/ch/" + name, recursive=True)
    elif os.path.islink("/" + name):
        os.symlink(os.readlink("/" + name), t + "/ch/" + name)
os.chroot(t + "/ch")
os.chdir("/")
result = run(SandboxSpec(rootfs=t + "/merged", argv=("grep", "CapBnd", "/proc/self/status"),
                         env=("PATH=/bin",), cwd="/"), on_output=print)
print(result.notices)
"""
    for d in ("merged", "up", "work", "ch"):
        (tmp_path / d).mkdir()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=PROJECT, env={"PYTHONPATH": str(PROJECT)}, check=True)
    assert "fell back to chroot" in done.stdout
    assert "CapBnd:\\t00000000a80025fb" in done.stdout  # Docker's set without SYS_CHROOT
