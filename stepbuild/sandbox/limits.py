"""A step's resource limits as plain data, and docker's spellings of them — no syscalls here.

`Limits` is what `--memory`, `--memory-swap`, `--pids-limit`, `--cpu-shares`, `--cpu-quota`,
`--cpu-period`, `--cpuset-cpus`, `--ulimit`, `--shm-size`, `--add-host` and `--cgroup-parent`
ask for; `cgroups.py` applies the cgroup ones, `child.py` the ulimits, `spec.py` the size of
/dev/shm and `build/run.py` the extra /etc/hosts lines. The defaults limit nothing, as
docker's. The `parse_*` functions read the flags as docker does and raise ValueError with a
message fit for the user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
DEFAULT_SHM_SIZE = 64 * MIB  # docker's
MIN_MEMORY = 6 * MIB  # docker refuses less: "Minimum memory limit allowed is 6MB"

# setrlimit(2) resource numbers (asm-generic/resource.h) by docker's --ulimit names
RLIMITS = {
    "cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5, "nproc": 6, "nofile": 7,
    "memlock": 8, "as": 9, "locks": 10, "sigpending": 11, "msgqueue": 12, "nice": 13,
    "rtprio": 14, "rttime": 15,
}
UNLIMITED = -1  # as docker spells it; also Python's resource.RLIM_INFINITY on Linux

# docker's units.RAMInBytes: binary multiples, "64m", "64MB", "1.5g", "64 MiB", bytes alone
_SIZE = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?) ?(?P<unit>[kmgtp])?i?b?", re.IGNORECASE)
_UNITS = {"": 1, "k": KIB, "m": MIB, "g": GIB, "t": GIB << 10, "p": GIB << 20}
_CPUSET = re.compile(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*")


@dataclass(frozen=True, slots=True)
class Ulimit:
    """One `--ulimit name=soft[:hard]`; UNLIMITED (-1) for no limit."""

    name: str
    soft: int
    hard: int


@dataclass(frozen=True, slots=True)
class Limits:
    """What a step may use. None (or empty) means unlimited / inherited, as in docker.

    `memory_swap` is memory plus swap, as docker's --memory-swap: None means twice
    `memory`, UNLIMITED no swap limit. `pids` counts the step's processes and threads.
    `cgroup_parent` is a cgroup path (from the hierarchy's root) to put the step's cgroup
    under, instead of the builder's own. `add_hosts` are (name, address) lines for
    /etc/hosts.
    """

    memory: int | None = None
    memory_swap: int | None = None
    pids: int | None = None
    cpu_shares: int | None = None
    cpu_quota: int | None = None
    cpu_period: int | None = None
    cpuset_cpus: str = ""
    ulimits: tuple[Ulimit, ...] = ()
    shm_size: int = DEFAULT_SHM_SIZE
    add_hosts: tuple[tuple[str, str], ...] = ()
    cgroup_parent: str = ""

    def __post_init__(self) -> None:
        if self.memory is not None and self.memory < MIN_MEMORY:
            raise ValueError("--memory: the minimum is 6 MiB")
        if self.memory_swap not in (None, UNLIMITED):
            if self.memory is None:
                raise ValueError("--memory-swap needs --memory as well")
            if self.memory_swap < self.memory:
                raise ValueError("--memory-swap must be at least --memory (it counts both)")
        if self.pids is not None and self.pids < 1:
            raise ValueError("--pids-limit must be at least 1 (0 or -1: unlimited)")
        if self.cpu_shares is not None and not 2 <= self.cpu_shares <= 262144:
            raise ValueError("--cpu-shares must be between 2 and 262144")
        if self.cpu_period is not None and not 1000 <= self.cpu_period <= 1000000:
            raise ValueError("--cpu-period must be between 1000 and 1000000 microseconds")
        if self.cpu_quota is not None and self.cpu_quota < 1000:
            raise ValueError("--cpu-quota must be at least 1000 microseconds")
        if self.cpuset_cpus and not _CPUSET.fullmatch(self.cpuset_cpus):
            raise ValueError(f"--cpuset-cpus: not a CPU list like 0-2,4: {self.cpuset_cpus!r}")
        if self.shm_size <= 0:
            raise ValueError("--shm-size must be more than 0")
        if ".." in self.cgroup_parent.split("/"):
            raise ValueError(f"--cgroup-parent cannot hold '..': {self.cgroup_parent!r}")

    def cgroup_limited(self) -> bool:
        """True if any limit needs a cgroup controller (not just a cgroup of its own)."""
        return any(value is not None for value in (
            self.memory, self.memory_swap, self.pids, self.cpu_shares, self.cpu_quota,
            self.cpu_period)) or bool(self.cpuset_cpus)

    def swap_total(self) -> int | None:
        """Memory plus swap in bytes, None for no limit (docker: twice --memory by default)."""
        if self.memory is None or self.memory_swap == UNLIMITED:
            return None
        return self.memory_swap if self.memory_swap is not None else 2 * self.memory

    @classmethod
    def from_json_data(cls, data: dict[str, Any]) -> Limits:
        """The inverse of dataclasses.asdict after a JSON round trip (tuples became lists)."""
        fields = dict(data)
        fields["ulimits"] = tuple(Ulimit(**u) for u in fields.get("ulimits", ()))
        fields["add_hosts"] = tuple((name, ip) for name, ip in fields.get("add_hosts", ()))
        return cls(**fields)


def parse_size(text: str) -> int:
    """Bytes from docker's size spelling: `64m`, `1g`, `512k`, `1.5GiB`, `1048576`."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a size (like 64m, 1g or a number of bytes): {text!r}")
    return int(float(match["number"]) * _UNITS[(match["unit"] or "").lower()])


def parse_memory_swap(text: str) -> int:
    """--memory-swap: a size, or -1 for unlimited swap."""
    return UNLIMITED if text.strip() == "-1" else parse_size(text)


def parse_ulimit(text: str) -> Ulimit:
    """`name=soft[:hard]` (hard defaults to soft), -1 meaning unlimited, as docker."""
    name, equals, values = text.partition("=")
    if not equals or name not in RLIMITS:
        raise ValueError(f"--ulimit wants NAME=SOFT[:HARD] with NAME one of "
                         f"{', '.join(sorted(RLIMITS))}: {text!r}")
    soft_text, _, hard_text = values.partition(":")
    try:
        soft = int(soft_text)
        hard = int(hard_text) if hard_text else soft
    except ValueError:
        raise ValueError(f"--ulimit values must be integers (-1: unlimited): {text!r}") from None
    if soft < -1 or hard < -1:
        raise ValueError(f"--ulimit values cannot be below -1: {text!r}")
    if hard != UNLIMITED and (soft == UNLIMITED or soft > hard):
        raise ValueError(f"--ulimit: the soft limit cannot exceed the hard one: {text!r}")
    return Ulimit(name, soft, hard)


def parse_add_host(text: str) -> tuple[str, str]:
    """`name:ip` (or `name=ip`) -> (name, ip). The address may be IPv6 (`h:::1`, `h=::1`)."""
    import ipaddress

    separator = min((i for i in (text.find("="), text.find(":")) if i >= 0), default=-1)
    name, address = text[:separator], text[separator + 1:]
    if separator <= 0 or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"--add-host wants NAME:IP: {text!r}")
    if address == "host-gateway":
        raise ValueError("--add-host: host-gateway is not supported; give the address")
    try:
        return name, str(ipaddress.ip_address(address.strip("[]")))
    except ValueError:
        raise ValueError(f"--add-host: not an IP address: {address!r}") from None


def human_size(size: int) -> str:
    """`64 MiB`, `1 GiB`, `1536 KiB`, `100 bytes`: as exact as the size is round."""
    for unit, name in ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} bytes"
