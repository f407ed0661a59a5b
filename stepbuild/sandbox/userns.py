"""Rootless: re-enter the builder in a user namespace of its own, as its root.

A normal user cannot mount, make namespaces other than a user namespace, or chown. Inside a
user namespace it is "root" with every capability over what that namespace owns: it can make
mount, PID, UTS, IPC and network namespaces, mount overlay (with `userxattr`), proc, tmpfs and
binds, and chown files to the ids the namespace maps. That is how rootless podman and buildah
work, and so the rest of stepbuild works unchanged: it sees container ids (0 is the user).

Root without CAP_SYS_ADMIN (an unprivileged container's root, `isolation.py` decides) comes
here too: the same namespace, mapped with every id root has to itself (`maps_for_root`).

`enter` forks. The child unshares a user namespace and waits; the parent, still in the host's
namespace (only a process there may write the child's maps with more than its own id), maps it
— `newuidmap`/`newgidmap` for the user's subordinate ranges, a one-id map written directly, or
root's identity map, written directly too — and tells the child, which becomes root (0:0) of
the namespace and returns to run the command. The parent only waits: it relays SIGTERM, SIGHUP
and SIGQUIT, ignores SIGINT (the child is in the same process group, so a ^C at the terminal
reaches it directly), and exits with the child's status. The child dies with the parent
(PR_SET_PDEATHSIG), so a `kill -9` of the command the user started leaves nothing running.

Errors are raised in the child, the one process that goes on to print them (`cli/main.py`):
a map the parent could not apply reaches the child as a message on the pipe.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
from typing import NoReturn

from stepbuild.errors import RootlessError
from stepbuild.fs.userns import parse_id_map
from stepbuild.sandbox.idmap import IdMaps, build_maps, identity_maps, parse_subids

__all__ = ["enter", "maps_for", "maps_for_root"]

SUBUID, SUBGID = "/etc/subuid", "/etc/subgid"
UIDMAP_HINT = "apt-get install uidmap (newuidmap and newgidmap map the subordinate ids)"
USERNS_HINT = ("user namespaces are off for unprivileged users here: see sysctl"
               " user.max_user_namespaces (and kernel.apparmor_restrict_unprivileged_userns)")
_FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def maps_for(uid: int, gid: int) -> IdMaps:
    """The maps for the user `uid` (primary group `gid`), from /etc/subuid and /etc/subgid."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)  # no passwd entry (a container's arbitrary uid): match by number only
    return build_maps(uid, gid, parse_subids(_read(SUBUID), name, uid),
                      parse_subids(_read(SUBGID), name, uid))


def maps_for_root() -> IdMaps:
    """Root's identity map of the ids this process has (its own /proc/self/uid_map and
    gid_map: all of them outside any user namespace)."""
    return identity_maps(parse_id_map(_read("/proc/self/uid_map")),
                         parse_id_map(_read("/proc/self/gid_map")))


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def enter(maps: IdMaps) -> None:
    """Continue this process as root of a new user namespace mapped by `maps`.

    Returns in the child, inside the namespace; the parent never returns (it exits with the
    child's status). Call before any thread starts (fork) and before anything is written
    to stdout (the parent's buffers are the child's too: flush them first). Raises
    RootlessError, in the child, when the namespace cannot be made or mapped."""
    sys.stdout.flush()
    sys.stderr.flush()
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        _become_root(parent, ready_w, go_r)
        return
    os.close(ready_w)
    os.close(go_r)
    _supervise(pid, maps, ready_r, go_w)


def _become_root(parent: int, ready_w: int, go_r: int) -> None:
    """The child: unshare, let the parent map us, then take ids 0:0 of the namespace."""
    from stepbuild.sandbox import linux  # noqa: TID251 -- userns.py is sandbox/'s own

    linux.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    try:
        linux.unshare(linux.CLONE_NEWUSER)
    except OSError as exc:
        os.close(ready_w)  # EOF: the parent maps nothing and waits for our exit
        os.close(go_r)
        raise RootlessError(f"cannot create a user namespace for rootless stepbuild:"
                            f" {os.strerror(exc.errno or 0)}", hint=USERNS_HINT) from None
    os.write(ready_w, b"1")
    os.close(ready_w)
    with os.fdopen(go_r, "rb") as answer:
        said = answer.read().decode(errors="replace")
    if said != "ok":
        message, _, hint = said.partition("\t")
        raise RootlessError(message or "cannot map the rootless user namespace: the parent"
                            " process died", hint=hint or None)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    if _may_setgroups():  # drop the host's supplementary groups (unmapped ids inside)
        os.setgroups([])


def _may_setgroups() -> bool:
    with open("/proc/self/setgroups", encoding="ascii") as f:
        return f.read().strip() == "allow"


def _supervise(pid: int, maps: IdMaps, ready_r: int, go_w: int) -> NoReturn:
    """The parent: map the child's namespace, then wait for it and exit with its status."""
    for sig in _FORWARDED:
        signal.signal(sig, lambda signum, _frame: os.kill(pid, signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with os.fdopen(ready_r, "rb") as ready:
        unshared = ready.read(1) == b"1"
    with os.fdopen(go_w, "wb") as go:
        if unshared:
            try:
                _apply(pid, maps)
                go.write(b"ok")
            except OSError as exc:
                go.write(f"cannot map the rootless user namespace: {exc}".encode())
            except RootlessError as exc:
                go.write(f"{exc.message}\t{exc.hint or ''}".encode())
            except BaseException:
                os.kill(pid, signal.SIGKILL)
                raise
    status = os.waitpid(pid, 0)[1]
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def _apply(pid: int, maps: IdMaps) -> None:
    """Write the child's uid and gid maps."""
    if maps.privileged:
        # Root with CAP_SETUID and CAP_SETGID: any map of its ids, setgroups left allowed.
        _write(f"/proc/{pid}/uid_map", maps.file_text(maps.uids))
        _write(f"/proc/{pid}/gid_map", maps.file_text(maps.gids))
        return
    if not maps.full:
        # One line mapping our own ids needs no privilege; the gid map only after setgroups
        # is denied (user_namespaces(7), "Interaction with system calls that change ...").
        _write(f"/proc/{pid}/uid_map", maps.file_text(maps.uids))
        _write(f"/proc/{pid}/setgroups", "deny")
        _write(f"/proc/{pid}/gid_map", maps.file_text(maps.gids))
        return
    uid_args, gid_args = maps.helper_args(pid)
    for program, args in (("newuidmap", uid_args), ("newgidmap", gid_args)):
        path = shutil.which(program)
        if path is None:
            raise RootlessError(f"cannot map the rootless user namespace: {program} not found",
                                hint=UIDMAP_HINT)
        done = subprocess.run([path, *args], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise RootlessError(f"cannot map the rootless user namespace: {program}"
                                f" {' '.join(args)}: {said}",
                                hint=f"check your user's ranges in {SUBUID} and {SUBGID}; in"
                                     f" a container, where a setuid {program} cannot map"
                                     f" them, run stepbuild as the container's root")


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text)
