"""Rootless: a normal user's command continues in a user namespace of its own, as its root.

Decided here, before the command runs and before any thread starts: every command that
touches the store enters the namespace (`sandbox/userns.py`), not only those that mount. A
store of a rootless user holds files owned by its subordinate ids, which only the namespace's
root may remove or chown (prune, rmi, a dead builder's leftovers cleared at the next lock),
and reading them as the namespace's root sees the same ids a rootful store holds. `parse`,
`login` and `logout` need no store and run as they are.
"""

from __future__ import annotations

import argparse
import os

from stepbuild.cli.commands import store_root

__all__ = ["OUTSIDE", "reenter"]

OUTSIDE = frozenset({"parse", "login", "logout"})  # the commands that never need it


def reenter(options: argparse.Namespace) -> None:
    """As a normal user: continue in a new user namespace (the call returns there, as root
    of it; the process that called it waits and exits with its status). As root: nothing."""
    if os.geteuid() == 0:
        return
    # The user's store, decided as the user: inside, euid 0 would pick /var/lib/stepbuild.
    options.root = str(store_root(options.root))
    from stepbuild.sandbox import userns

    userns.enter(userns.maps_for(os.getuid(), os.getgid()))
