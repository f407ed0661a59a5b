"""Linux system calls that Python's `os` module lacks — the only ctypes code in stepbuild.

Owns: mount namespaces, the new mount API (fsopen/fsconfig/fsmount/move_mount/open_tree/
mount_setattr; mount_setattr(2), kernel Documentation/filesystems/mount_api.rst), openat2,
pivot_root, setns, capabilities, a few prctl calls. Each function does one call or one fixed
sequence and raises OSError(errno, what) on failure. No policy here: what to mount and which
capabilities to keep is data from `spec.py`; the order is `child.py`'s.

Also imported, as a top-level module, by `child.py` and `forkserver.py` in the fork server's
`python -I -S` — so it imports only os, ctypes and struct.
"""

from __future__ import annotations

import ctypes  # noqa: TID251 -- this module is the fence around ctypes
import os
import struct

TYPE_CHECKING = False  # mypy treats any `TYPE_CHECKING` as true; importing typing costs ~7 ms
if TYPE_CHECKING:
    from collections.abc import Sequence

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# unshare(2) flags
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWUSER = 0x20000000, 0x40000000, 0x10000000

# mount attributes, for fsmount(2) and mount_setattr(2); names as in mount(8)
ATTRS = {"ro": 0x1, "nosuid": 0x2, "nodev": 0x4, "noexec": 0x8}

# Syscalls glibc has no wrapper for. Numbers from 424 on are the same on every architecture
# (the unified table since Linux 5.1); the two older ones differ.
_NR = {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
       "close_range": 436, "openat2": 437, "mount_setattr": 442}
_NR.update({"x86_64": {"pivot_root": 155, "capset": 126, "rt_sigaction": 13, "seccomp": 317},
            "aarch64": {"pivot_root": 41, "capset": 91, "rt_sigaction": 134, "seccomp": 277},
            }[os.uname().machine])

_AT_FDCWD, _AT_EMPTY_PATH, _AT_RECURSIVE = -100, 0x1000, 0x8000
_MS_REC, _MS_PRIVATE, _MNT_DETACH = 0x4000, 1 << 18, 2
_FSCONFIG_SET_FLAG, _FSCONFIG_SET_STRING, _FSCONFIG_CMD_CREATE = 0, 1, 6
_FSOPEN_CLOEXEC = _FSMOUNT_CLOEXEC = 0x1  # not O_CLOEXEC, unlike open_tree
_OPEN_TREE_CLONE, _MOVE_F_EMPTY, _MOVE_T_EMPTY = 1, 0x4, 0x40
_RESOLVE_NO_MAGICLINKS, _RESOLVE_IN_ROOT = 0x02, 0x10
_PR_SET_PDEATHSIG, _PR_CAPBSET_READ, _PR_CAPBSET_DROP = 1, 23, 24
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 36, 38


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _arg(value: object) -> object:
    # syscall(2) is variadic: integers go as full-width longs, paths as bytes; buffers and
    # None (NULL) as they are
    if isinstance(value, int):
        return ctypes.c_long(value)
    return os.fsencode(value) if isinstance(value, str) else value


def _syscall(name: str, *args: object) -> int:
    return _check(_libc.syscall(ctypes.c_long(_NR[name]), *map(_arg, args)), name)


def unshare(flags: int) -> None:
    """unshare(2); CLONE_NEWPID applies to the caller's next child, not to the caller."""
    _check(_libc.unshare(flags), "unshare")


def make_rprivate(path: str = "/") -> None:
    """Stop mount propagation below `path` both ways (mount_namespaces(7), "MS_PRIVATE")."""
    _check(_libc.mount(b"none", os.fsencode(path), None, _MS_REC | _MS_PRIVATE, None),
           f"make {path} private")


def enter_private_mount_namespace() -> None:
    """Move the calling process into a new mount namespace that shares nothing with the host.

    Call once at builder start-up, before any thread exists (unshare(CLONE_NEWNS) fails with
    EINVAL in a process whose fs_struct is shared). Afterwards every mount the builder makes is
    invisible outside it and vanishes when the builder and its children exit, even on kill -9.
    """
    unshare(CLONE_NEWNS)
    make_rprivate("/")


def new_fs(fstype: str, params: Sequence[tuple[str, str | None]], attrs: int = 0) -> int:
    """fsopen + fsconfig (value None: a flag) + fsmount: a detached mount fd, for the caller
    to attach and close. The fs context's error log, if any, goes into the OSError."""
    fs = _syscall("fsopen", fstype, _FSOPEN_CLOEXEC)
    try:
        for key, value in params:
            cmd = _FSCONFIG_SET_FLAG if value is None else _FSCONFIG_SET_STRING
            _fsconfig(fs, cmd, key, value, fstype)
        _fsconfig(fs, _FSCONFIG_CMD_CREATE, None, None, fstype)
        return _syscall("fsmount", fs, _FSMOUNT_CLOEXEC, attrs)
    finally:
        os.close(fs)


def _fsconfig(fs: int, cmd: int, key: str | None, value: str | None, fstype: str) -> None:
    try:
        _syscall("fsconfig", fs, cmd, key, value, 0)
    except OSError as e:
        log = []
        try:  # one queued message per read, then ENODATA (overlayfs mostly logs to dmesg)
            while True:
                log.append(os.read(fs, 512).decode(errors="replace").strip())
        except OSError:
            pass
        what = f"{key}={value}" if value is not None else key or "create"
        reason = "; ".join(log) or os.strerror(e.errno or 0)
        raise OSError(e.errno, f"{fstype} {what}: {reason}") from None


def clone_tree(source: str | int, *, recursive: bool = False) -> int:
    """open_tree(OPEN_TREE_CLONE): a detached bind mount of `source` (a path or an fd)."""
    flags = _OPEN_TREE_CLONE | os.O_CLOEXEC | (_AT_RECURSIVE if recursive else 0)
    if isinstance(source, int):
        return _syscall("open_tree", source, "", flags | _AT_EMPTY_PATH)
    return _syscall("open_tree", _AT_FDCWD, source, flags)


def set_attrs(mount_fd: int, attrs: int, *, recursive: bool = False) -> None:
    """mount_setattr(2): add `attrs` (ATTRS bits) to a mount, or to its whole tree."""
    attr = ctypes.create_string_buffer(struct.pack("QQQQ", attrs, 0, 0, 0))  # struct mount_attr
    flags = _AT_EMPTY_PATH | (_AT_RECURSIVE if recursive else 0)
    _syscall("mount_setattr", mount_fd, "", flags, attr, len(attr))


def attach(mount_fd: int, target: str | int) -> None:
    """move_mount(2) a detached mount onto `target`: a path, or an O_PATH fd of the mount point."""
    if isinstance(target, int):
        _syscall("move_mount", mount_fd, "", target, "", _MOVE_F_EMPTY | _MOVE_T_EMPTY)
    else:
        _syscall("move_mount", mount_fd, "", _AT_FDCWD, target, _MOVE_F_EMPTY)


def bind_mount(source: str, target: str, *, readonly: bool = False,
               recursive: bool = False) -> None:
    """Bind `source` onto `target`; `readonly` applies to every mount of a recursive bind."""
    fd = clone_tree(source, recursive=recursive)
    try:
        if readonly:
            set_attrs(fd, ATTRS["ro"], recursive=recursive)
        attach(fd, target)
    finally:
        os.close(fd)


def mount_overlay(target: str, lowers: Sequence[str], upper: str | None, work: str | None, *,
                  readonly: bool = False, userxattr: bool = False) -> None:
    """Mount an overlay of `lowers` (top first) with `upper`/`work` on `target`, nodev.

    Each lower is its own `lowerdir+` parameter (Linux >= 6.8), so the one-page limit of the
    classic option string does not cap the stack depth. redirect_dir, metacopy and index are
    off so the upper dir is a complete, self-contained diff (overlayfs.rst;
    docs/security.md rule 10). upper=None gives a read-only overlay of the lowers; a single
    lower is then simply bound read-only, as overlayfs refuses one lower without an upper dir.
    `userxattr` (in a user namespace: rootless): overlay keeps its state in `user.overlay.*`
    xattrs, as `trusted.*` needs root in the host's namespace; redirect_dir is then
    "nofollow" (overlay refuses "off", which means "follow", with userxattr).
    Raises OSError(errno, "mount overlay <target>: <kernel message>").
    """
    if upper is None and len(lowers) == 1:
        bind_mount(lowers[0], target, readonly=True)
        return
    params: list[tuple[str, str | None]] = [("source", "overlay")]
    params += [("lowerdir+", lower) for lower in lowers]
    if upper is not None:
        params += [("upperdir", upper), ("workdir", work or "")]
    if userxattr:
        params += [("userxattr", None), ("redirect_dir", "nofollow")]
    else:
        params += [("redirect_dir", "off")]
    params += [("metacopy", "off"), ("index", "off")]
    attrs = ATTRS["nodev"] | (ATTRS["ro"] if readonly or upper is None else 0)
    try:
        fd = new_fs("overlay", params, attrs)
        try:
            attach(fd, target)
        finally:
            os.close(fd)
    except OSError as e:
        raise OSError(e.errno, f"mount overlay {target}: {e.strerror}") from None


def filesystem_type(path: str) -> int:
    """statfs(2)'s f_type of the filesystem holding `path` (a magic number; the first
    word of struct statfs on every architecture we run on)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86_64 and arm64
    _check(_libc.statfs(os.fsencode(path), buf), f"statfs {path}")
    return int(struct.unpack_from("l", buf.raw)[0])


def umount(target: str) -> None:
    """umount2(target, MNT_DETACH): detach now, free when no longer busy (umount(2))."""
    _check(_libc.umount2(os.fsencode(target), _MNT_DETACH), f"umount {target}")


def open_in_root(root_fd: int, path: str, flags: int = os.O_PATH) -> int:
    """openat2(RESOLVE_IN_ROOT): open `path` as if `root_fd` were "/" (openat2(2)).

    Absolute symlinks and ".." are resolved inside the root, so a rootfs cannot point a mount
    target at a host path (docs/security.md rule 1); magic links (/proc/*/fd/*) are refused.
    """
    how = ctypes.create_string_buffer(  # struct open_how
        struct.pack("QQQ", flags | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS))
    try:
        return _syscall("openat2", root_fd, path, how, len(how))
    except OSError as e:
        raise OSError(e.errno, f"open {path} in root: {os.strerror(e.errno or 0)}") from None


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2); ("." , ".") stacks the old root on the new one, to be detached next."""
    _syscall("pivot_root", new_root, put_old)


def sethostname(name: str) -> None:
    """sethostname(2), in the calling process's UTS namespace."""
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def bring_up_loopback() -> None:
    """Set `lo` up in the calling process's (fresh) network namespace (netdevice(7))."""
    sock = _check(_libc.socket(2, 2, 0), "socket")  # AF_INET, SOCK_DGRAM
    try:
        ifreq = ctypes.create_string_buffer(struct.pack("16sh22x", b"lo", 0x1 | 0x8 | 0x40))
        _check(_libc.ioctl(sock, ctypes.c_ulong(0x8914), ifreq), "SIOCSIFFLAGS lo")  # UP|LO|RUN
    finally:
        os.close(sock)


def setns(fd: int, nstype: int) -> None:
    """setns(2): move the calling thread into the namespace `fd` refers to (os.setns is 3.12+)."""
    _check(_libc.setns(fd, nstype), "setns")


def bind_new_network_namespace(path: str) -> None:
    """Move the calling thread into a new network namespace and keep the namespace alive by
    binding it onto the file `path`, as `ip netns add` does.

    Only the calling thread changes namespace (unshare(2) of CLONE_NEWNET is per-thread), and
    it stays there: call this in a thread of its own that ends afterwards (network.py does).
    Going back with setns(2) is not an option for a rootless builder: it has no capability
    over the host's network namespace. The bind lives in the builder's private mount
    namespace: it vanishes with the builder, even after kill -9.
    """
    unshare(CLONE_NEWNET)
    bind_mount("/proc/thread-self/ns/net", path)


def set_pdeathsig(signal: int) -> None:
    """Have the kernel send `signal` to this process when its parent thread exits (prctl(2))."""
    _check(_libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal), 0, 0, 0), "PR_SET_PDEATHSIG")


def set_child_subreaper() -> None:
    """Become the reaper of this process's orphaned descendants (prctl(2)), so that what a
    step leaves running can be found (our children) and killed, without a PID namespace."""
    _check(_libc.prctl(_PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1), 0, 0, 0),
           "PR_SET_CHILD_SUBREAPER")


def set_no_new_privs() -> None:
    """no_new_privs (prctl(2)): execve never grants privileges again (setuid bits and file
    capabilities are ignored). Lets a process without CAP_SYS_ADMIN load a seccomp filter."""
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), 0, 0, 0), "PR_SET_NO_NEW_PRIVS")


def limit_bounding_set(keep: int) -> None:
    """Drop every capability not in the bit mask `keep` from the bounding set, for good."""
    cap = 0
    while (held := _libc.prctl(_PR_CAPBSET_READ, ctypes.c_ulong(cap), 0, 0, 0)) >= 0:
        # (EINVAL past the last one.) One already out of the set needs no CAP_SETPCAP.
        if held and not keep & (1 << cap):
            _check(_libc.prctl(_PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0), "CAPBSET_DROP")
        cap += 1
    _check(_libc.prctl(_PR_CAP_AMBIENT, ctypes.c_ulong(_PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0),
           "PR_CAP_AMBIENT_CLEAR_ALL")


def set_capabilities(effective_permitted: int) -> None:
    """capset(2): effective = permitted = the mask, inheritable empty.

    Inheritable stays empty as in moby since CVE-2022-24769: with it set, a non-root user
    could regain capabilities by executing a file that has inheritable file capabilities.
    """
    version_3 = 0x20080522  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set
    header = ctypes.create_string_buffer(struct.pack("Ii", version_3, 0))
    low, high = effective_permitted & 0xFFFFFFFF, effective_permitted >> 32
    data = ctypes.create_string_buffer(struct.pack("6I", low, low, 0, high, high, 0))
    _syscall("capset", ctypes.addressof(header), ctypes.addressof(data))


def load_seccomp_filter(program: bytes) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER) with `program`, struct sock_filter records (8 bytes
    each) as libseccomp exports them. Without no_new_privs (docker build does not set it:
    setuid programs keep working) this needs CAP_SYS_ADMIN, so call it before dropping it.
    Inherited by every descendant, for good."""
    code = ctypes.create_string_buffer(program, len(program))
    fprog = ctypes.create_string_buffer(  # struct sock_fprog: u16 len, padding, pointer
        struct.pack("HxxxxxxP", len(program) // 8, ctypes.addressof(code)))
    _syscall("seccomp", 1, 0, fprog)  # SECCOMP_SET_MODE_FILTER, no flags


def cloexec_from(first: int) -> None:
    """close_range(first, ~0, CLOSE_RANGE_CLOEXEC): every fd >= first closes at execve."""
    _syscall("close_range", first, 0xFFFFFFFF, 0x4)


def reset_signals() -> None:
    """Default every signal disposition and unblock all: ignored signals survive execve(2), and
    this interpreter ignores SIGPIPE and SIGXFSZ, and glibc's posix_spawn ignores its internal
    signals 32 and 33, which its signal() refuses to touch — hence the raw rt_sigaction."""
    default = ctypes.create_string_buffer(32)  # struct kernel_sigaction, all zero: SIG_DFL
    for sig in range(1, 65):
        if sig not in (9, 19):  # SIGKILL, SIGSTOP cannot be changed
            _syscall("rt_sigaction", sig, default, None, 8)
    empty = ctypes.create_string_buffer(128)
    _check(_libc.sigprocmask(2, empty, None), "sigprocmask")  # SIG_SETMASK
