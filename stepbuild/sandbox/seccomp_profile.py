"""A Docker/OCI seccomp profile (JSON) resolved into the rules one step's filter holds — pure.

The profile format is the one Docker, Podman and Buildah read (containers-common's
`/usr/share/containers/seccomp.json`, moby's `profiles/seccomp/default.json`): a default
action, an `archMap`, and `syscalls` entries whose `includes`/`excludes` name capabilities,
architectures and a minimum kernel. `resolve` decides those conditions here, in Python, the
way moby's `setupSeccomp` does, for the step's capabilities, the host's architecture and its
kernel; what is left is a `Policy` of plain rules for `libseccomp.compile_bpf`.

`harden` then adds the overlay Docker's own profile has and containers-common's lacks: that
profile allows `keyctl` and `unshare`/`clone` with CLONE_NEWUSER, leaning on capabilities;
a RUN step must not reach the host's keyrings or make a user namespace (where it would hold
every capability again), so those get EPERM.
"""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass

# scmp_compare (seccomp.h) by the name profiles use
COMPARE_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
               "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
# actions a step's filter may take; NOTIFY (a supervisor) and TRACE (a tracer) have none here
ACTIONS = frozenset({"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD",
                     "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP", "SCMP_ACT_LOG"})
# uname -m -> the Go name `includes.arches` uses (moby compares them with runtime.GOARCH)
GO_ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm",
             "s390x": "s390x", "ppc64le": "ppc64le", "riscv64": "riscv64"}
# uname -m -> the profile's SCMP_ARCH_ name of the native architecture
SCMP_ARCHES = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64",
               "s390x": "SCMP_ARCH_S390X", "ppc64le": "SCMP_ARCH_PPC64LE",
               "riscv64": "SCMP_ARCH_RISCV64"}

CLONE_NEWUSER = 0x10000000


class ProfileError(ValueError):
    """The profile is not JSON of the expected shape, or asks for what we cannot do."""


@dataclass(frozen=True, slots=True)
class Condition:
    """One argument comparison: argument `index` `op` `value` (MASKED_EQ: arg & value ==
    value_two)."""

    index: int
    op: str
    value: int
    value_two: int = 0


@dataclass(frozen=True, slots=True)
class Rule:
    """`action` (with `errno` for SCMP_ACT_ERRNO) for `name` when every condition holds."""

    name: str
    action: str
    errno: int = 0
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    """What the filter does: `rules` in order, else `default_action` (`default_errno`)."""

    default_action: str
    default_errno: int
    arches: tuple[str, ...]  # SCMP_ARCH_ names, the native one first
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Host:
    """What a profile's conditions look at: capability names (CAP_...), `uname -m`, and the
    kernel release as (major, minor)."""

    caps: frozenset[str]
    machine: str
    kernel: tuple[int, int]


def load(path: str) -> dict[str, object]:
    """Read a profile file; ProfileError if it is not a JSON object."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except ValueError as exc:
        raise ProfileError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: not a seccomp profile (a JSON object)")
    return data


def kernel_version(release: str) -> tuple[int, int]:
    """`6.18.0-1-amd64` -> (6, 18)."""
    parts = (release.split("-")[0].split(".") + ["0"])[:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        raise ProfileError(f"kernel version {release!r} is not MAJOR.MINOR") from None


def resolve(profile: dict[str, object], host: Host) -> Policy:
    """The rules of `profile` that apply on `host`, as moby decides them."""
    try:
        default = str(profile["defaultAction"])
        default_errno = int(str(profile.get("defaultErrnoRet", errno.EPERM)))
        entries = _objects(profile, "syscalls")
        arch_map = _objects(profile, "archMap")
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"malformed profile: {exc}") from None
    _check_action(default)
    rules: list[Rule] = []
    for entry in entries:
        if applies(entry, host):
            rules += _entry_rules(entry)
    # libseccomp refuses a rule whose action is the default one; it changes nothing anyway
    kept = tuple(r for r in rules if (r.action, r.errno) != (default, _errno(default,
                                                                            default_errno)))
    return Policy(default, _errno(default, default_errno), _arches(arch_map, host.machine), kept)


def applies(entry: dict[str, object], host: Host) -> bool:
    """moby's rule: every `includes` condition holds and no `excludes` one does."""
    includes, excludes = _object(entry, "includes"), _object(entry, "excludes")
    arch = GO_ARCHES.get(host.machine, host.machine)
    wanted_arches, wanted_kernel = _strings(includes, "arches"), includes.get("minKernel")
    if wanted_arches and arch not in wanted_arches:
        return False
    if any(cap not in host.caps for cap in _strings(includes, "caps")):
        return False
    if wanted_kernel and host.kernel < kernel_version(str(wanted_kernel)):
        return False
    if arch in _strings(excludes, "arches"):
        return False
    if any(cap in host.caps for cap in _strings(excludes, "caps")):
        return False
    unwanted_kernel = excludes.get("minKernel")
    return not (unwanted_kernel and host.kernel >= kernel_version(str(unwanted_kernel)))


def _entry_rules(entry: dict[str, object]) -> list[Rule]:
    """An entry's rules. As runc does: its conditions are ANDed in one rule per name, unless
    two name the same argument — then each condition is a rule of its own (ORed)."""
    names = _strings(entry, "names") or ([str(entry["name"])] if "name" in entry else [])
    action = str(entry.get("action"))
    _check_action(action)
    err = _errno(action, int(str(entry.get("errnoRet", errno.EPERM))))
    conditions = [_condition(arg) for arg in _objects(entry, "args")]
    indexes = [c.index for c in conditions]
    groups = ([(c,) for c in conditions] if len(set(indexes)) < len(indexes)
              else [tuple(conditions)])
    return [Rule(str(name), action, err, group) for name in names for group in groups]


def _condition(arg: dict[str, object]) -> Condition:
    try:
        op = str(arg["op"])
        index = int(str(arg["index"]))
        cond = Condition(index, op, int(str(arg.get("value", 0))),
                         int(str(arg.get("valueTwo", 0))))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"malformed argument condition {arg!r}: {exc}") from None
    if op not in COMPARE_OPS or not 0 <= index < 6:
        raise ProfileError(f"unsupported argument condition {arg!r}")
    return cond


def _object(data: dict[str, object], key: str) -> dict[str, object]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise ProfileError(f"{key} must be an object: {value!r}")
    return value


def _objects(data: dict[str, object], key: str) -> list[dict[str, object]]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ProfileError(f"{key} must be a list of objects: {value!r}")
    return value


def _strings(data: dict[str, object], key: str) -> list[str]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProfileError(f"{key} must be a list of strings: {value!r}")
    return value


def _check_action(action: str) -> None:
    if action not in ACTIONS:
        raise ProfileError(f"unsupported seccomp action {action!r}")


def _errno(action: str, value: int) -> int:
    return value if action == "SCMP_ACT_ERRNO" else 0


def _arches(arch_map: list[dict[str, object]], machine: str) -> tuple[str, ...]:
    """The native architecture and the sub-architectures the profile maps to it (on x86_64:
    x86 and x32), so 32-bit syscalls are filtered rather than refused outright."""
    native = SCMP_ARCHES.get(machine)
    if native is None:
        raise ProfileError(f"no seccomp architecture known for {machine!r}")
    for entry in arch_map:
        if entry.get("architecture") == native:
            return (native, *_strings(entry, "subArchitectures"))
    return (native,)


# The hardening overlay: EPERM, as Docker's default profile gives these (or its capability
# rules amount to). Replaces whatever the profile said for these names.
DENIED = ("keyctl", "add_key", "request_key", "io_uring_setup", "io_uring_enter",
          "io_uring_register")
# unshare/clone: allowed without CLONE_NEWUSER in the flags (argument 0 on x86_64 and arm64),
# refused with it. Applied where the profile allows the call unconditionally.
NEWUSER_GUARDED = ("unshare", "clone")
_WITHOUT_NEWUSER = Condition(0, "SCMP_CMP_MASKED_EQ", CLONE_NEWUSER, 0)
_WITH_NEWUSER = Condition(0, "SCMP_CMP_MASKED_EQ", CLONE_NEWUSER, CLONE_NEWUSER)


def harden(policy: Policy) -> Policy:
    """`policy` with the overlay applied. clone3 hides its flags behind a pointer a filter
    cannot read: where it was allowed, it gets ENOSYS, as in Docker, and glibc falls back to
    clone, which is checked."""
    rules: list[Rule] = []
    for rule in policy.rules:
        if rule.name in DENIED:
            continue
        if rule.name in NEWUSER_GUARDED and rule.action == "SCMP_ACT_ALLOW" \
                and not rule.conditions:
            rules.append(Rule(rule.name, "SCMP_ACT_ALLOW", 0, (_WITHOUT_NEWUSER,)))
            rules.append(Rule(rule.name, "SCMP_ACT_ERRNO", errno.EPERM, (_WITH_NEWUSER,)))
        elif rule.name == "clone3" and rule.action == "SCMP_ACT_ALLOW":
            rules.append(Rule("clone3", "SCMP_ACT_ERRNO", errno.ENOSYS))
        else:
            rules.append(rule)
    rules += [Rule(name, "SCMP_ACT_ERRNO", errno.EPERM) for name in DENIED]
    return Policy(policy.default_action, policy.default_errno, policy.arches,
                  tuple(r for r in rules if (r.action, r.errno)
                        != (policy.default_action, policy.default_errno)))
