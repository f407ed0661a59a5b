"""Where the command runs: as it is, or in a user namespace of its own, as its root.

Decided here, before the command runs and before any thread starts, from what
`sandbox/isolation.py` finds: root with CAP_SYS_ADMIN runs as it is; a normal user
(rootless) and root without CAP_SYS_ADMIN (an unprivileged container's root) continue in a
user namespace (`sandbox/userns.py`), mapped from /etc/subuid for the user, every id to
itself for root. Every command that touches the store enters it, not only those that mount. A
store of a rootless user holds files owned by its subordinate ids, which only the namespace's
root may remove or chown (prune, rmi, a dead builder's leftovers cleared at the next lock),
and reading them as the namespace's root sees the same ids a rootful store holds; and the
layer dirs of a store used from a user namespace carry overlay's `user.overlay.*` xattrs,
which every command writing one (pull, load, build) must agree on. `parse`, `login`,
`logout`, `version` and `completion` need no store and run as they are.

Where no mode is possible (root without CAP_SYS_ADMIN whose user namespaces are refused
too), the commands whose steps need one (`ISOLATED`) stop with the reasons; the others run
as they are.
"""

from __future__ import annotations

import argparse
import os

from stepbuild.cli.commands import store_root

__all__ = ["ISOLATED", "OUTSIDE", "reenter"]

# the commands that never need it
OUTSIDE = frozenset({"parse", "login", "logout", "version", "completion"})
ISOLATED = frozenset({"build", "run"})  # the commands that run steps or containers


def reenter(options: argparse.Namespace) -> None:
    """Choose the isolation (kept in `options.isolation_chosen`, for the build's first line
    and the no-op fingerprint) and, for `userns`, continue in a new user namespace: the call
    returns there, as root of it; the process that called it waits and exits with its
    status. `options.userns` is the command's name."""
    from stepbuild.errors import IsolationUnavailable
    from stepbuild.sandbox import isolation

    # --isolation is build's and run's; the other commands take what this environment allows
    requested = getattr(options, "isolation", isolation.AUTO) if options.userns in ISOLATED \
        else isolation.AUTO
    try:
        chosen = isolation.resolve(requested)
    except IsolationUnavailable:
        if options.userns in ISOLATED:
            raise
        return  # images, check, ...: nothing to isolate, root does them as it is
    options.isolation_chosen = chosen
    if chosen.mode != isolation.USERNS:
        return
    from stepbuild.sandbox import userns

    if chosen.as_root:
        userns.enter(userns.maps_for_root())
        return
    # The user's store, decided as the user: inside, euid 0 would pick /var/lib/stepbuild.
    options.root = str(store_root(options.root))
    userns.enter(userns.maps_for(os.getuid(), os.getgid()))
