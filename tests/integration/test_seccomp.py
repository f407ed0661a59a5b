"""The seccomp filter of RUN steps for real (docs/security.md): the system's containers-common
profile with the hardening overlay refuses what docker build refuses, `unconfined` and a
profile of one's own do what they say, and ordinary work is unaffected."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from stepbuild.sandbox import Mount, RunResult, SandboxSpec, host, run
from stepbuild.sandbox import seccomp as seccomp_setting
from tests.integration.builds import Stepbuild, assert_clear_error, store_with_base, write_context

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("private_mount_ns")]

PROBE_SOURCE = Path(__file__).with_name("syscall_probe.c")


class Box:
    """A busybox step with the probe at /probe."""

    def __init__(self, merged: Path, etc: Path) -> None:
        self.merged, self.etc = merged, etc

    def run(self, script: str, **kw: object) -> tuple[RunResult, str]:
        spec = SandboxSpec(rootfs=str(self.merged), argv=("sh", "-c", script),
                           env=("PATH=/bin",), cwd="/", etc_dir=str(self.etc))
        chunks: list[bytes] = []
        result = run(replace(spec, **kw), on_output=chunks.append)  # type: ignore[arg-type]
        return result, b"".join(chunks).decode()

    def call(self, *probe_args: str, **kw: object) -> int:
        """The errno the probe's call got in the step (0: it worked)."""
        result, out = self.run(" ".join(("/probe", *probe_args)), **kw)
        assert result.exit_code == 0, out
        return int(out.split()[1])


@pytest.fixture
def box(tmp_path: Path, busybox_rootfs: Path, syscall_probe: Path) -> Iterator[Box]:
    (tmp_path / "etc").mkdir()
    with host.mounted(tmp_path, [busybox_rootfs]) as merged:
        shutil.copy(syscall_probe, merged / "probe")
        yield Box(merged, tmp_path / "etc")


def test_a_step_runs_in_seccomp_filter_mode(box: Box) -> None:
    _, out = box.run("grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status")
    # no_new_privs stays off, as in docker build: setuid programs keep working
    assert out.split() == ["NoNewPrivs:", "0", "Seccomp:", "2"]


def test_unconfined_runs_without_a_filter(box: Box) -> None:
    _, out = box.run("grep ^Seccomp: /proc/self/status", seccomp="unconfined")
    assert out.split() == ["Seccomp:", "0"]


@pytest.fixture
def host_key(syscall_probe: Path) -> Iterator[str]:
    """A secret in the host root's user keyring, as a CI runner's credentials may be."""
    key = subprocess.run([str(syscall_probe), "host_key"], capture_output=True, text=True,
                         check=True).stdout.strip()
    yield key
    subprocess.run([str(syscall_probe), "keyctl_invalidate", key], check=True, capture_output=True)


def test_host_keyring_secret_cannot_be_read(box: Box, host_key: str) -> None:
    result, out = box.run(f"/probe keyctl_read {host_key}", seccomp="unconfined")
    assert out.split() == ["keyctl_read", "0", "hostsecret"]  # what the filter stops
    assert box.call("keyctl_read", host_key) == errno.EPERM


@pytest.mark.parametrize("call", ["add_key", "unshare_user", "clone_user", "io_uring_setup"])
def test_overlay_refuses_what_the_profile_allows(box: Box, call: str) -> None:
    """containers-common's profile lets these through (they work unconfined); the overlay
    gives EPERM, as Docker's profile does."""
    assert box.call(call, seccomp="unconfined") == 0
    assert box.call(call) == errno.EPERM


def test_busybox_unshare_of_a_user_namespace_fails(box: Box) -> None:
    result, _ = box.run("unshare -U true")
    assert result.exit_code != 0
    result, _ = box.run("unshare -U true", seccomp="unconfined")
    assert result.exit_code == 0


@pytest.mark.parametrize(("call", "refusal"), [
    ("clone3", errno.ENOSYS),  # flags out of a filter's sight: glibc falls back to clone
    ("bpf", errno.EPERM), ("perf_event_open", errno.EPERM), ("kexec_load", errno.EPERM),
])
def test_privileged_calls_are_refused(box: Box, call: str, refusal: int) -> None:
    assert box.call(call) == refusal


@pytest.mark.parametrize("call", ["fork", "unshare_files"])
def test_calls_without_a_new_user_namespace_work(box: Box, call: str) -> None:
    assert box.call(call) == 0


def test_ordinary_shell_work_and_a_user_switch_are_unaffected(box: Box) -> None:
    script = ("mkdir -p /tmp/a && cd /tmp/a && echo hi > f && cp f g && tar cf t.tar f g"
              " && gzip t.tar && ls | sort | tr '\\n' ' ' && id -u")
    result, out = box.run(script, uid=1000, gid=1000)
    assert result.exit_code == 0, out
    assert out.split() == ["f", "g", "t.tar.gz", "1000"]


def test_a_compiler_is_unaffected(tmp_path: Path, syscall_probe: Path) -> None:
    """gcc (fork, exec, mmap, temp files, its linker) under the filter, with the host's own
    root as the image: the busybox one has no compiler."""
    with host.mounted(tmp_path, [Path("/")]) as merged:
        box = Box(merged, tmp_path / "no-etc")
        result, out = box.run("cd /tmp && gcc -static -O1 -o probe probe.c && ./probe fork &&"
                              " grep ^Seccomp: /proc/self/status",
                              env=("PATH=/usr/bin:/bin",),
                              mounts=(Mount("bind", str(PROBE_SOURCE), "/tmp/probe.c",
                                            options="create=file"),))
    assert result.exit_code == 0, out
    assert out.split()[-4:] == ["fork", "0", "Seccomp:", "2"]


def test_a_profile_of_ones_own_is_used_as_it_is(box: Box, tmp_path: Path) -> None:
    profile = json.loads(Path(seccomp_setting.DEFAULT_PROFILE).read_text())
    profile["syscalls"].append({"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                                "errnoRet": errno.EROFS})
    for entry in profile["syscalls"]:  # the allow list names mkdir too: this rule replaces it
        if entry["action"] == "SCMP_ACT_ALLOW" and not entry.get("args"):
            entry["names"] = [n for n in entry["names"] if n not in ("mkdir", "mkdirat")]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    result, out = box.run("mkdir /made; /probe keyctl_read 1", seccomp=str(path))
    assert "Read-only file system" in out
    # no overlay on a profile of one's own: keyctl reaches the kernel, which knows no key 1
    assert out.split()[-2:] == ["keyctl_read", str(errno.ENOKEY)]


# -- through the CLI ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sb(tmp_path_factory: pytest.TempPathFactory) -> Stepbuild:
    return store_with_base(tmp_path_factory.mktemp("seccomp-store"), "seccomp")


def test_build_and_run_are_filtered_unless_unconfined(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path, "FROM base\nRUN grep ^Seccomp: /proc/self/status > /s\n")
    sb.build(context, "-t", "filtered")
    assert sb.run("filtered", "cat", "/s").split() == ["Seccomp:", "2"]
    assert sb.run("filtered", "grep", "^Seccomp:", "/proc/self/status").split()[1] == "2"
    assert sb("run", "--security-opt", "seccomp=unconfined", "filtered", "grep", "^Seccomp:",
              "/proc/self/status").stdout.split()[1] == "0"
    sb.build(context, "--no-cache", "--security-opt", "seccomp=unconfined", "-t", "bare")
    assert sb.run("bare", "cat", "/s").split() == ["Seccomp:", "0"]


def test_a_missing_profile_refuses_run_steps(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path, "FROM base\nRUN true\n")
    result = sb.build(context, "--no-cache", "--security-opt",
                      f"seccomp={tmp_path / 'missing.json'}", check=False)
    assert_clear_error(result, 2, "missing.json", "no such profile")
    result = sb.build(context, "--security-opt", "apparmor=unconfined", check=False)
    assert_clear_error(result, 2, "only seccomp=")


def test_without_the_system_profile_steps_are_refused(box: Box, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp_setting, "DEFAULT_PROFILE", str(tmp_path / "seccomp.json"))
    with pytest.raises(seccomp_setting.SeccompUnavailable,
                       match="no seccomp filter for RUN.*seccomp=unconfined"):
        box.run("touch /ran")
    assert not (box.merged / "ran").exists()
    result, _ = box.run("touch /ran", seccomp="unconfined")
    assert result.exit_code == 0 and (box.merged / "ran").exists()


def test_cli_refuses_run_steps_without_a_profile_in_one_line(
        sb: Stepbuild, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from stepbuild.cli.main import main

    monkeypatch.setattr(seccomp_setting, "DEFAULT_PROFILE", str(tmp_path / "seccomp.json"))
    context = write_context(tmp_path / "ctx", "FROM base\nRUN touch /ran\n")
    assert main(["--root", str(sb.root), "build", "--no-cache", "-t", "refused",
                 str(context)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1, err
    assert "seccomp.json" in errors[0] and "--security-opt seccomp=unconfined" in errors[0]
    assert main(["--root", str(sb.root), "build", "--no-cache", "-t", "refused",
                 "--security-opt", "seccomp=unconfined", str(context)]) == 0
