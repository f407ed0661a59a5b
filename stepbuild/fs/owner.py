"""Work files that say who owns them, so that a dead builder's leftovers can be told apart.

A builder killed with SIGKILL (or by a power loss) runs no cleanup: its temp dirs and files
stay behind. Each of them carries the owner's tag in its name, `@<machine>.<pid>.<start>`:
the pid, the process's start time (field 22 of /proc/<pid>/stat, in clock ticks since boot)
and a short hash of the boot id and the PID namespace. A pid alone is not enough, as pids
are reused; the start time tells the reuser from the owner. The machine part keeps us from
judging the processes of another machine (a store on NFS) or another PID namespace, or of
this machine before a reboot: those are left alone (`gc.prune` takes them after its grace
period).

Standard library only, cheap to import: `fs/durable.py` names its temp files with it.
"""

from __future__ import annotations

import os
import re

__all__ = ["is_dead_work", "owner_tag"]

# `@` is in no name stepbuild makes otherwise; the random rest of the name follows a `-`.
_TAG = re.compile(r"@(?P<machine>[0-9a-f]{8})\.(?P<pid>[0-9]+)\.(?P<start>[0-9]+)-")

_mine: tuple[int, str] | None = None  # (pid, tag): recomputed in a fork()ed child


def owner_tag() -> str:
    """This process's tag, `@<machine>.<pid>.<start>`, to put in the names of its work."""
    global _mine
    pid = os.getpid()
    if _mine is None or _mine[0] != pid:
        _mine = pid, f"@{_machine()}.{pid}.{_start_time(pid)}"
    return _mine[1]


def is_dead_work(name: str) -> bool:
    """True if `name` is the work of a process of this machine that has exited (its pid is
    gone, or belongs to a later process). False for live owners, other machines and names
    without an owner."""
    owner = _TAG.search(name)
    if owner is None or owner["machine"] != _machine():
        return False
    return _start_time(int(owner["pid"])) != int(owner["start"])


def _start_time(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks after boot), None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces and ')': split after
    # its last ')'. Field 22 (starttime) is then the 20th of the rest.
    return int(stat[stat.rindex(b")") + 2:].split()[19])


_machine_tag: str | None = None


def _machine() -> str:
    """8 hex digits naming this boot of this machine and our PID namespace."""
    global _machine_tag
    if _machine_tag is None:
        import hashlib

        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            boot = f.read().strip()
        namespace = os.readlink("/proc/self/ns/pid").encode()
        _machine_tag = hashlib.sha256(boot + b"\0" + namespace).hexdigest()[:8]
    return _machine_tag
