"""stepbuild.sandbox.seccomp_profile and seccomp: a profile's conditions resolved as moby
does, the hardening overlay, --security-opt, and the refusal without a profile — no root."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from stepbuild.errors import UsageError
from stepbuild.sandbox import seccomp
from stepbuild.sandbox.seccomp_profile import (
    CLONE_NEWUSER,
    Condition,
    Host,
    Policy,
    ProfileError,
    Rule,
    harden,
    kernel_version,
    resolve,
)
from stepbuild.sandbox.spec import DOCKER_DEFAULT_CAPS, SandboxSpec

DOCKER_CAPS = frozenset(f"CAP_{c}" for c in DOCKER_DEFAULT_CAPS)
AMD64 = Host(DOCKER_CAPS, "x86_64", (6, 18))
ALLOW, ERRNO = "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO"


def profile(*entries: dict[str, object], **top: object) -> dict[str, object]:
    return {"defaultAction": ERRNO, "defaultErrnoRet": errno.ENOSYS, "syscalls": list(entries),
            **top}


def names(policy: Policy) -> list[str]:
    return [r.name for r in policy.rules]


@pytest.mark.parametrize(("includes", "excludes", "applies"), [
    ({"caps": ["CAP_CHOWN"]}, {}, True),
    ({"caps": ["CAP_CHOWN", "CAP_SYS_ADMIN"]}, {}, False),  # every included cap is needed
    ({}, {"caps": ["CAP_SYS_ADMIN"]}, True),
    ({}, {"caps": ["CAP_SYS_ADMIN", "CAP_KILL"]}, False),  # any excluded cap rules it out
    ({"arches": ["amd64", "x32"]}, {}, True),  # Go's names, as moby compares them
    ({"arches": ["arm64"]}, {}, False),
    ({}, {"arches": ["amd64"]}, False),
    ({"minKernel": "6.18"}, {}, True),
    ({"minKernel": "6.19"}, {}, False),
    ({}, {"minKernel": "4.8"}, False),
    ({}, {"minKernel": "7.0"}, True),
])
def test_includes_and_excludes(includes: dict[str, object], excludes: dict[str, object],
                               applies: bool) -> None:
    entry = {"names": ["ptrace"], "action": ALLOW, "includes": includes, "excludes": excludes}
    assert names(resolve(profile(entry), AMD64)) == (["ptrace"] if applies else [])


def test_errno_defaults_to_eperm_and_rules_like_the_default_are_dropped() -> None:
    policy = resolve(profile({"names": ["a"], "action": ERRNO},
                             {"names": ["b"], "action": ERRNO, "errnoRet": errno.ENOSYS},
                             {"names": ["c"], "action": ALLOW}), AMD64)
    assert policy.rules == (Rule("a", ERRNO, errno.EPERM), Rule("c", ALLOW))
    assert (policy.default_action, policy.default_errno) == (ERRNO, errno.ENOSYS)


def test_conditions_on_different_arguments_are_anded_on_one_argument_ored() -> None:
    anded = {"names": ["socket"], "action": ALLOW, "args": [
        {"index": 0, "value": 16, "op": "SCMP_CMP_NE"}, {"index": 2, "value": 9,
                                                         "op": "SCMP_CMP_NE"}]}
    ored = {"names": ["personality"], "action": ALLOW, "args": [
        {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 8,
                                                        "op": "SCMP_CMP_EQ"}]}
    assert resolve(profile(anded, ored), AMD64).rules == (
        Rule("socket", ALLOW, 0, (Condition(0, "SCMP_CMP_NE", 16), Condition(2, "SCMP_CMP_NE", 9))),
        Rule("personality", ALLOW, 0, (Condition(0, "SCMP_CMP_EQ", 0),)),
        Rule("personality", ALLOW, 0, (Condition(0, "SCMP_CMP_EQ", 8),)),
    )


def test_sub_architectures_come_from_the_arch_map() -> None:
    arch_map = [{"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
                {"architecture": "SCMP_ARCH_X86_64",
                 "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}]
    assert resolve(profile(archMap=arch_map), AMD64).arches == (
        "SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")
    assert resolve(profile(), AMD64).arches == ("SCMP_ARCH_X86_64",)


@pytest.mark.parametrize("bad", [
    {"defaultAction": "SCMP_ACT_NOTIFY"},  # needs a supervisor we do not have
    {"defaultAction": ERRNO, "syscalls": {"names": []}},
    {"defaultAction": ERRNO, "syscalls": [{"names": ["x"], "action": ALLOW,
                                           "args": [{"index": 6, "op": "SCMP_CMP_EQ"}]}]},
    {"defaultAction": ERRNO, "syscalls": [{"names": ["x"], "action": ALLOW,
                                           "args": [{"index": 0, "op": "SCMP_CMP_SOON"}]}]},
    {"defaultAction": ERRNO, "syscalls": [{"names": ["x"], "action": "SCMP_ACT_TRACE"}]},
    {"syscalls": []},
])
def test_what_we_cannot_compile_is_a_profile_error(bad: dict[str, object]) -> None:
    with pytest.raises(ProfileError):
        resolve(bad, AMD64)


def test_kernel_version() -> None:
    assert kernel_version("6.18.0-1-amd64") == (6, 18)
    assert kernel_version("5.4") == (5, 4)
    with pytest.raises(ProfileError):
        kernel_version("six")


def test_overlay_denies_keyrings_and_io_uring_whatever_the_profile_said() -> None:
    policy = harden(resolve(profile({"names": ["keyctl", "read"], "action": ALLOW}), AMD64))
    assert Rule("keyctl", ERRNO, errno.EPERM) in policy.rules
    assert Rule("read", ALLOW) in policy.rules
    for name in ("add_key", "request_key", "io_uring_setup", "io_uring_enter",
                 "io_uring_register"):
        assert Rule(name, ERRNO, errno.EPERM) in policy.rules
    assert names(policy).count("keyctl") == 1


def test_overlay_guards_user_namespaces_by_argument_mask() -> None:
    policy = harden(resolve(profile({"names": ["unshare", "clone", "clone3"],
                                     "action": ALLOW}), AMD64))
    without = Condition(0, "SCMP_CMP_MASKED_EQ", CLONE_NEWUSER, 0)
    with_newuser = Condition(0, "SCMP_CMP_MASKED_EQ", CLONE_NEWUSER, CLONE_NEWUSER)
    for name in ("unshare", "clone"):
        assert [r for r in policy.rules if r.name == name] == [
            Rule(name, ALLOW, 0, (without,)), Rule(name, ERRNO, errno.EPERM, (with_newuser,))]
    # clone3 -> ENOSYS, the default here, so no rule is needed (glibc falls back to clone)
    assert "clone3" not in names(policy)


def test_overlay_keeps_a_profiles_own_conditions_on_clone() -> None:
    docker_clone = {"names": ["clone"], "action": ALLOW, "excludes": {"caps": ["CAP_SYS_ADMIN"]},
                    "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]}
    policy = harden(resolve(profile(docker_clone), AMD64))
    assert [r for r in policy.rules if r.name == "clone"] == [
        Rule("clone", ALLOW, 0, (Condition(0, "SCMP_CMP_MASKED_EQ", 2114060288, 0),))]


def test_the_system_profile_for_dockers_caps() -> None:
    data = json.loads(Path(seccomp.DEFAULT_PROFILE).read_text())
    rules = {r.name: r for r in resolve(data, AMD64).rules if not r.conditions}
    assert rules["bpf"] == Rule("bpf", ERRNO, errno.EPERM)  # no CAP_SYS_ADMIN
    assert rules["kexec_load"] == Rule("kexec_load", ERRNO, errno.EPERM)
    assert rules["socket"] == Rule("socket", ALLOW)  # CAP_AUDIT_WRITE is in Docker's set
    assert rules["arch_prctl"] == Rule("arch_prctl", ALLOW)
    admin = resolve(data, Host(DOCKER_CAPS | {"CAP_SYS_ADMIN"}, "x86_64", (6, 18)))
    assert Rule("bpf", ALLOW) in admin.rules


# -- seccomp.py: the setting and the compiled program --------------------------------------


def test_security_opts(tmp_path: Path) -> None:
    profile_file = tmp_path / "p.json"
    profile_file.write_text("{}")
    assert seccomp.parse_security_opts([]) == "default"
    assert seccomp.parse_security_opts(["seccomp=unconfined"]) == "unconfined"
    assert seccomp.parse_security_opts(["seccomp=unconfined", f"seccomp={profile_file}"]
                                       ) == str(profile_file)
    for bad, words in [("seccomp=/no/such.json", "no such profile"),
                       ("apparmor=unconfined", "only seccomp="), ("seccomp", "only seccomp=")]:
        with pytest.raises(UsageError, match=words):
            seccomp.parse_security_opts([bad])


def test_spec_takes_default_unconfined_or_an_absolute_path() -> None:
    base = {"rootfs": "/m", "argv": ("true",), "env": (), "cwd": "/"}
    assert SandboxSpec(**base).seccomp == "default"  # type: ignore[arg-type]
    SandboxSpec(**base, seccomp="/etc/p.json")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seccomp"):
        SandboxSpec(**base, seccomp="p.json")  # type: ignore[arg-type]


def test_no_profile_refuses_the_step_in_one_line(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp, "DEFAULT_PROFILE", str(tmp_path / "seccomp.json"))
    with pytest.raises(seccomp.SeccompUnavailable) as caught:
        seccomp.program("default")
    assert "\n" not in caught.value.render()
    assert "seccomp.json" in caught.value.message
    assert "--security-opt seccomp=unconfined" in caught.value.message
    assert seccomp.program("unconfined") is None


def test_a_profile_we_cannot_compile_refuses_the_step(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"defaultAction": "SCMP_ACT_NOTIFY"}))
    with pytest.raises(seccomp.SeccompUnavailable, match="SCMP_ACT_NOTIFY"):
        seccomp.program(str(bad))
    bad.write_text("not json")
    with pytest.raises(seccomp.SeccompUnavailable, match="not JSON"):
        seccomp.program(str(bad))


def test_program_is_bpf_compiled_once_per_profile(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile({"names": ["read", "write", "exit"], "action": ALLOW})))
    first = seccomp.program(str(path))
    assert first is not None and len(first) % 8 == 0 and len(first) > 8  # sock_filter records
    assert seccomp.program(str(path)) is first
    path.write_text(json.dumps(profile({"names": ["read"], "action": ALLOW})))
    os.utime(path, ns=(0, 0))  # a changed profile is compiled again
    assert seccomp.program(str(path)) != first
