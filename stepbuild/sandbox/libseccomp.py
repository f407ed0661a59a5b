"""Compile a resolved seccomp `Policy` to a classic BPF program with libseccomp (ctypes).

Runs in the builder, once per build and profile (`seccomp.program` caches it): the child
only hands the exported bytes to seccomp(2), ~1 ms, where letting libseccomp compile in each
child would cost ~11 ms a step. libseccomp.so.2 comes with podman, buildah and runc (Debian
`libseccomp2`). Syscall names this libseccomp does not know are left out, as runc does: a
call the library cannot name is one it cannot allow either, so the default action applies.
"""

from __future__ import annotations

import ctypes  # noqa: TID251 -- the fence around libseccomp, as linux.py is around libc
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stepbuild.sandbox.seccomp_profile import Policy, Rule

_NR_SCMP_ERROR = -1
_ACTION_BITS = {"SCMP_ACT_KILL_PROCESS": 0x80000000, "SCMP_ACT_KILL_THREAD": 0x00000000,
                "SCMP_ACT_KILL": 0x00000000, "SCMP_ACT_TRAP": 0x00030000,
                "SCMP_ACT_ERRNO": 0x00050000, "SCMP_ACT_LOG": 0x7FFC0000,
                "SCMP_ACT_ALLOW": 0x7FFF0000}


class Unavailable(OSError):
    """libseccomp.so.2 cannot be loaded here."""


class _ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def _library() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libseccomp.so.2")  # find_library would run ldconfig
    except OSError as exc:
        raise Unavailable(0, f"libseccomp is not installed ({exc})") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def action_value(action: str, errno: int = 0) -> int:
    """The SECCOMP_RET_ value of a profile action (ERRNO carries its errno in the low bits)."""
    return _ACTION_BITS[action] | (errno & 0xFFFF if action == "SCMP_ACT_ERRNO" else 0)


def compile_bpf(policy: Policy) -> bytes:
    """The filter as struct sock_filter records, ready for seccomp(SECCOMP_SET_MODE_FILTER).
    Raises Unavailable without libseccomp, OSError if it refuses a rule."""
    from stepbuild.sandbox.seccomp_profile import COMPARE_OPS

    lib = _library()
    ctx = lib.seccomp_init(action_value(policy.default_action, policy.default_errno))
    if not ctx:
        raise OSError(0, "seccomp_init failed")
    try:
        for arch in policy.arches[1:]:  # the native one is in a new context already
            token = lib.seccomp_arch_resolve_name(arch.removeprefix("SCMP_ARCH_").lower().encode())
            _check(lib.seccomp_arch_add(ctx, token) if token else -22, f"add arch {arch}")
        for rule in policy.rules:
            _add(lib, ctx, rule, COMPARE_OPS)
        return _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)


def _add(lib: ctypes.CDLL, ctx: int, rule: Rule, ops: dict[str, int]) -> None:
    number = lib.seccomp_syscall_resolve_name(rule.name.encode())
    if number == _NR_SCMP_ERROR:
        return  # unknown to this libseccomp (or to no architecture): the default applies
    args = (_ArgCmp * len(rule.conditions))(*(
        _ArgCmp(c.index, ops[c.op], c.value, c.value_two) for c in rule.conditions))
    _check(lib.seccomp_rule_add_array(ctx, action_value(rule.action, rule.errno), number,
                                      len(rule.conditions), args), f"rule for {rule.name}")


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)  # a pipe could fill up and block
    try:
        _check(lib.seccomp_export_bpf(ctx, fd), "export the filter")
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _check(ret: int, what: str) -> None:
    if ret < 0:  # libseccomp returns -errno
        raise OSError(-ret, f"libseccomp: {what}: {os.strerror(-ret)}")
