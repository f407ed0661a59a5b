"""What a test of unpacking or path resolution watches on the host: /etc and our descriptors.

Both checks look only at what the code under test could have done, because the pytest process
is shared: a daemon thread an earlier test left (an HTTP server, a connection pool) may open
or close a socket mid-test, the garbage collector may close one, and another process on the
machine may make and remove a temp file in /etc.
"""

from __future__ import annotations

import os
from pathlib import Path


def etc_state() -> tuple[object, ...]:
    """/etc's entries and passwd's mtime: an escape that wrote there changes one of them."""
    return (sorted(os.listdir("/etc")), Path("/etc/passwd").stat().st_mtime_ns)


def open_descriptors() -> set[tuple[str, str]]:
    """(fd, what it names) for every descriptor of this process."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
        except FileNotFoundError:  # the listing's own descriptor, closed by now
            continue
    return out


def leaked_under(top: Path, before: set[tuple[str, str]]) -> list[str]:
    """Descriptors opened since `before` that name something in `top` (still open: leaked)."""
    prefix = f"{top}/"
    new = open_descriptors() - before
    return sorted(target for _, target in new if target == str(top) or target.startswith(prefix))
