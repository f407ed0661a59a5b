"""The sandbox child: performs one step's plan, then becomes the step's command.

The fork server (`forkserver.py`, a `python -I -S` that imported this file as the top-level
module `child`) forks a copy of itself per step, which calls `main(SERVER_PID)` with these fds:
0 = /dev/null, 1 and 2 = the output pipe, 3 = the plan (`spec.child_payload`, marshalled;
read to EOF), 4 = the status pipe. It does only what the plan says:

1. join the build's network namespace (network="private"); unshare mount, PID, UTS, IPC (and
   network, for network="none") namespaces; make the mount tree private so nothing
   propagates back to the builder;
2. fork, so the grandchild is PID 1 of the new PID namespace; this process only waits for it
   and exits with its status (128+N when killed by signal N);
3. in the grandchild: bind the rootfs onto itself nodev, perform every Mount, pivot_root into
   the rootfs and detach the old root, set the hostname, set the ulimits (--ulimit; as root,
   so a hard limit may be raised), create cwd, load the seccomp filter (plan["seccomp"],
   BPF bytes, or None), drop to the bounding set and ids, enter cwd, mark every fd above 2
   close-on-exec, and execve the command — the interpreter is replaced; nothing of the host
   stays reachable.

Status records, one line each: `N<TAB>text` a notice, `E<TAB>errno<TAB>op` setup failed,
`R` about to execve. The status pipe is close-on-exec, so EOF after `R` without `E` means the
command is running, and its exit status is the command's, never a setup failure's.

The fork server's startup is paid by every build that runs a step, so this imports only os,
sys, marshal and linux (not spec: dataclasses costs ~11 ms; marshal instead of json saves
~5 ms — the data comes from the same interpreter binary over a private pipe).
"""

from __future__ import annotations

import errno
import marshal
import os
import stat
import sys

if __package__:
    from . import linux  # noqa: TID251 -- the sandbox child is linux.py's other user
else:  # top-level, as sandbox.run imports it: skip importing the stepbuild packages
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import linux  # type: ignore[import-not-found, no-redef]

PLAN_FD, STATUS_FD = 3, 4
SIGKILL = 9  # the signal module would import enum (~3 ms)
CAP_SYS_CHROOT = 18

TYPE_CHECKING = False  # mypy treats any `TYPE_CHECKING` as true; importing typing costs ~7 ms
if TYPE_CHECKING:
    from typing import Any, NoReturn

    Plan = dict[str, Any]  # what spec.child_payload built


class SetupFailed(Exception):
    def __init__(self, op: str, err: int) -> None:
        super().__init__(op)
        self.op, self.errno = op, err


def report(*fields: str) -> None:
    line = "\t".join(f.replace("\n", " ").replace("\t", " ") for f in fields) + "\n"
    os.write(STATUS_FD, line.encode(errors="replace"))


def main(server_pid: int) -> NoReturn:
    linux.set_pdeathsig(SIGKILL)
    if os.getppid() != server_pid:  # the server died before the line above took effect
        os._exit(1)
    with open(PLAN_FD, "rb") as f:
        plan = marshal.load(f)
    if plan["network"] == "private":
        join_network(plan["netns"])
    try:
        net = linux.CLONE_NEWNET if plan["network"] == "none" else 0
        linux.unshare(linux.CLONE_NEWNS | linux.CLONE_NEWPID | linux.CLONE_NEWUTS
                      | linux.CLONE_NEWIPC | net)
        make_private(plan["rootfs"])
        lifeline, keep_alive = os.pipe()
        pid = os.fork()
    except SetupFailed as e:
        fail(e.op, e.errno)
    except OSError as e:
        fail("create namespaces", e.errno or 0)
    if pid == 0:
        os.close(keep_alive)
        container(plan, lifeline)
    os.close(lifeline)
    os.close(STATUS_FD)  # the grandchild's copy alone must keep it open, until its execve
    status = os.waitpid(pid, 0)[1]
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def join_network(path: str) -> None:
    """Enter the network namespace bound at `path` (the build's private network)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            linux.setns(fd, linux.CLONE_NEWNET)
        finally:
            os.close(fd)
    except OSError as e:
        fail(f"join the network namespace {path}", e.errno or 0)


def make_private(rootfs: str) -> None:
    """Stop mount propagation both ways (mount_namespaces(7)), so nothing mounted here reaches
    the builder or the host. A chrooted builder's "/" may not be a mount point (EINVAL): then
    make the rootfs's subtree private, which holds every mount made here."""
    try:
        linux.make_rprivate("/")
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise SetupFailed("make mounts private", e.errno or 0) from None
        try:
            linux.make_rprivate(rootfs)
        except OSError as e2:
            raise SetupFailed(f"make {rootfs} private", e2.errno or 0) from None


def container(plan: Plan, lifeline: int) -> NoReturn:
    """PID 1 of the new namespaces: set up, then execve. Never returns."""
    try:
        begin_step(plan, lifeline)
        set_hostname(plan["hostname"])
        if plan["network"] == "none":
            linux.bring_up_loopback()
        caps = enter_root(plan)
        make_workdir(plan["cwd"])
        set_ulimits(plan["rlimits"])
        confine(plan.get("seccomp"))
        become_user(plan, caps)
        enter_workdir(plan["cwd"])
    except SetupFailed as e:
        fail(e.op, e.errno)
    except OSError as e:
        fail(failed_op("sandbox setup", e), e.errno or 0)
    except BaseException as e:  # a bug here: report it rather than print into the output
        fail(f"sandbox setup: {type(e).__name__}: {e}", 0)
    execute(plan["argv"], plan["env"])


def set_hostname(name: str) -> None:
    """sethostname(2) in the step's own UTS namespace. podman's seccomp profile refuses it
    (EPERM) to a container without CAP_SYS_ADMIN, even in a user namespace of its own: the
    step then keeps the container's hostname, and a notice says so."""
    try:
        linux.sethostname(name)
    except PermissionError:
        report("N", "sethostname refused (a seccomp profile?): the step keeps the hostname"
                    f" {os.uname().nodename!r}, not {name!r}")


def failed_op(prefix: str, e: OSError) -> str:
    """`prefix` and what failed, without the errno's text: `fail`'s reader (SandboxError) adds
    that, and linux.py's errors already end with it ("SIOCSIFFLAGS lo: Operation not
    permitted"), os's are nothing else."""
    text, reason = e.strerror or "", os.strerror(e.errno) if e.errno else ""
    if reason and (text == reason or text.endswith(": " + reason)):
        text = text[:-len(reason)].rstrip(": ")
    return f"{prefix}: {text}" if text else prefix


def begin_step(plan: Plan, lifeline: int) -> None:
    """What the step's process does first (here and in chroot_child.py): die with its
    parent, or exit now if that parent is already gone; umask 022; import `resource` while
    the host's stdlib is in reach, if the step has ulimits."""
    linux.set_pdeathsig(SIGKILL)
    os.set_blocking(lifeline, False)
    try:
        if os.read(lifeline, 1) == b"":  # EOF: our parent died before PDEATHSIG was set
            os._exit(1)
    except BlockingIOError:
        pass
    os.umask(0o022)
    if plan["rlimits"]:
        import resource  # noqa: F401


def fail(op: str, err: int) -> NoReturn:
    report("E", str(err), op)
    os._exit(127)


def enter_root(plan: Plan) -> int:
    """Mount everything into the rootfs, then make it "/". Returns the capabilities to keep."""
    rootfs = plan["rootfs"]
    try:
        tree = linux.clone_tree(rootfs, recursive=True)
        linux.set_attrs(tree, linux.ATTRS["nodev"], recursive=True)
        linux.attach(tree, rootfs)  # also makes the rootfs a mount point, as pivot_root needs
        os.close(tree)
        root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise SetupFailed(f"bind rootfs {rootfs}", e.errno or 0) from None
    skipped: list[str] = []
    for m in plan["mounts"]:
        try:
            perform(root, m, skipped)
        except OSError as e:
            raise SetupFailed(f"mount {m['kind']} {m['target']}", e.errno or 0) from None
    os.fchdir(root)
    os.close(root)
    return pivot(plan["capabilities"])


def pivot(caps: int) -> int:
    """pivot_root(".", ".") then detach the old root (pivot_root(2), "EXAMPLES"): no directory
    is made in the rootfs for it. Where refused (the host root is a ramfs), chroot, and stop
    the step from chrooting out again by dropping CAP_SYS_CHROOT."""
    try:
        linux.pivot_root(".", ".")
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise SetupFailed("pivot_root", e.errno or 0) from None
        report("N", "pivot_root refused (EINVAL): fell back to chroot, without CAP_SYS_CHROOT")
        os.chroot(".")
        os.chdir("/")
        return caps & ~(1 << CAP_SYS_CHROOT)
    try:
        linux.umount(".")  # the old root, stacked on "/" by pivot_root(".", ".")
    except OSError as e:
        raise SetupFailed("detach the old root", e.errno or 0) from None
    os.chdir("/")
    return caps


def perform(root: int, m: Plan, skipped: list[str]) -> None:
    """Put one mount in place; `skipped` collects targets left out (see spec's `optional`)."""
    target = m["target"]
    if any(target.startswith(s + "/") for s in skipped):
        return
    if m["kind"] == "symlink":
        parent, name = os.path.split(target)
        with _opened(linux.open_in_root(root, parent, os.O_PATH | os.O_DIRECTORY)) as d:
            os.symlink(m["source"], name, dir_fd=d)
        return
    tfd = mount_point(root, m)
    if tfd is None:
        skipped.append(target)
        if m["kind"] not in ("mask", "readonly"):  # those are often absent; not news
            report("N", f"skipped {m['kind']} mount on {target}: not in the image")
        return
    with _opened(tfd):
        mfd = source_mount(m, tfd)
        if mfd is None:
            report("N", f"skipped {m['kind']} mount on {target}: {m['source']} missing")
            return
        with _opened(mfd):
            linux.attach(mfd, tfd)


def mount_point(root: int, m: Plan) -> int | None:
    """O_PATH fd of the target inside the root; created if asked; None if optional and absent."""
    target = m["target"].lstrip("/") or "."
    try:
        return linux.open_in_root(root, target)
    except FileNotFoundError:
        if not m["create"]:
            if m["optional"]:
                return None
            raise
    parent, name = os.path.split(target)
    try:
        d = linux.open_in_root(root, parent or ".", os.O_PATH | os.O_DIRECTORY)
    except FileNotFoundError:
        if m["optional"]:
            return None
        raise
    with _opened(d):
        if m["create"] == "dir":
            os.mkdir(name, 0o755, dir_fd=d)
        else:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644,
                             dir_fd=d))
    return linux.open_in_root(root, target)


def source_mount(m: Plan, target_fd: int) -> int | None:
    """A detached mount fd of what goes on the target; None for a missing optional source."""
    kind, attrs = m["kind"], sum(linux.ATTRS[a] for a in m["attrs"])
    if kind == "readonly":
        tree = linux.clone_tree(target_fd, recursive=True)
        linux.set_attrs(tree, attrs | linux.ATTRS["ro"], recursive=True)
        return tree
    if kind == "mask":
        if stat.S_ISDIR(os.fstat(target_fd).st_mode):
            ro_nodev = linux.ATTRS["ro"] | linux.ATTRS["nodev"]
            return linux.new_fs("tmpfs", [("source", "tmpfs")], attrs | ro_nodev)
        return bind(m["source"], attrs, recursive=False)
    if kind == "bind":
        try:
            return bind(m["source"], attrs, m["recursive"])
        except FileNotFoundError:
            if m["optional"]:
                return None
            raise
    params = [("source", kind)] + [tuple(p) for p in m["params"]]
    try:
        return linux.new_fs(kind, params, attrs)
    except OSError as e:  # a fresh sysfs or proc may be refused (EPERM): bind the host's
        if not (kind in ("sysfs", "proc") and m["source"] and e.errno == errno.EPERM):
            raise
        # proc stays writable, as a fresh one is (its sys/, sysrq-trigger... are made
        # read-only by the readonly mounts that follow); sysfs is read-only anyway.
        readonly = " read-only" if kind == "sysfs" else ""
        report("N", f"fresh {kind} refused; binding the host's {m['source']}{readonly}")
        return bind(m["source"], attrs | (linux.ATTRS["ro"] if readonly else 0), recursive=True)


def bind(source: str, attrs: int, recursive: bool) -> int:
    tree = linux.clone_tree(source, recursive=recursive)
    if attrs:
        linux.set_attrs(tree, attrs, recursive=recursive)
    return tree


class _opened:
    """`with _opened(fd):` closes fd at the end (contextlib costs an import)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def set_ulimits(rlimits: list[list[Any]]) -> None:
    """setrlimit for each [name, resource, soft, hard] (-1: unlimited), while still root."""
    if not rlimits:
        return
    import resource  # imported before the pivot (see container): found in sys.modules

    for name, number, soft, hard in rlimits:
        try:
            resource.setrlimit(number, (soft, hard))
        except OSError as e:
            raise SetupFailed(f"set ulimit {name}={soft}:{hard}", e.errno or 0) from None
        except ValueError:  # e.g. nofile above fs.nr_open
            raise SetupFailed(f"set ulimit {name}={soft}:{hard}", errno.EINVAL) from None


def confine(program: bytes | None) -> None:
    """Load the step's seccomp filter (None: unconfined). As late as it can be while we still
    hold CAP_SYS_ADMIN (no no_new_privs, as in docker build; runc orders it the same way): what
    runs after it — dropping ids and capabilities, chdir, execve — the profile allows."""
    if program:
        try:
            linux.load_seccomp_filter(program)
        except OSError as e:
            raise SetupFailed("load the seccomp filter", e.errno or 0) from None


def become_user(plan: Plan, caps: int) -> None:
    """Cut the bounding set, switch ids, then set the capability sets.

    Order matters: dropping from the bounding set needs CAP_SETPCAP, and setuid to non-root
    clears permitted/effective by itself (capabilities(7), "Effect of user ID changes").
    """
    try:
        linux.limit_bounding_set(caps)
        set_groups(plan["groups"], plan["gid"])
        os.setgid(plan["gid"])
        os.setuid(plan["uid"])
        linux.set_capabilities(caps if plan["uid"] == 0 else 0)
    except OSError as e:
        raise SetupFailed(f"drop privileges to {plan['uid']}:{plan['gid']}", e.errno or 0) from None


def set_groups(groups: list[int], gid: int) -> None:
    """setgroups(2). Where it is denied (rootless with a one-id map: the kernel requires that
    before an unprivileged gid map is written) the groups we have are kept if they grant
    nothing beyond `groups` and the step's own `gid` (with one id mapped, that is gid 0)."""
    try:
        os.setgroups(groups)
    except PermissionError:
        if not set(os.getgroups()) <= {*groups, gid}:
            raise


def make_workdir(cwd: str) -> None:
    """mkdir -p, as root like Docker's WORKDIR; inside the new root, so symlinks stay in it."""
    try:
        os.makedirs(cwd, mode=0o755, exist_ok=True)
    except OSError as e:
        raise SetupFailed(f"create workdir {cwd}", e.errno or 0) from None


def enter_workdir(cwd: str) -> None:
    """chdir as the step's user and check we are really there, inside the root (runc
    CVE-2024-21626: a cwd outside the root shows up as "(unreachable)/...")."""
    try:
        os.chdir(cwd)
        here = os.getcwd()
        if not here.startswith("/") or not os.path.samestat(os.stat("."), os.stat(cwd)):
            raise SetupFailed(f"chdir {cwd}: ended up in {here}", errno.EXDEV)
    except OSError as e:
        raise SetupFailed(f"chdir {cwd}", e.errno or 0) from None


def execute(argv: list[str], env: list[str]) -> NoReturn:
    """Replace this interpreter with the command. Never returns.

    After the pivot the host's stdlib is out of reach, so nothing here may import lazily
    (os.execvpe does: it imports warnings) and every error must become an `E` record.
    """
    try:
        environ = dict(e.partition("=")[::2] for e in env)
        linux.reset_signals()
        linux.cloexec_from(3)  # the builder's fds, and ours, vanish at execve
        report("R")
        fail(f"exec {argv[0]}", search_and_exec(argv, environ))
    except OSError as e:
        fail(failed_op(f"exec {argv[0]}", e), e.errno or 0)
    except BaseException as e:
        fail(f"exec {argv[0]}: {type(e).__name__}: {e}", 0)


def search_and_exec(argv: list[str], env: dict[str, str]) -> int:
    """execvpe(3): try argv[0] in each directory of the step's PATH (not ours); returns the
    errno to report when none could be executed — EACCES if one was found but refused."""
    name = argv[0]
    if "/" in name:
        candidates = [name]
    else:
        path = env.get("PATH", "/bin:/usr/bin")  # execvpe(3)'s default
        candidates = [f"{d or '.'}/{name}" for d in path.split(":")]
    err = errno.ENOENT
    for candidate in candidates:
        try:
            os.execve(candidate, argv, env)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                return e.errno or 0
            if e.errno == errno.EACCES:
                err = errno.EACCES
    return err
