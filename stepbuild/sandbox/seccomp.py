"""Which seccomp filter a step runs under: `--security-opt seccomp=...` and the compiled program.

A step's `SandboxSpec.seccomp` is "default" (the system's containers-common profile, the one
Podman and Buildah use, with the `seccomp_profile.harden` overlay), "unconfined" (no filter,
as `docker build --security-opt seccomp=unconfined`) or the path of a profile of the same
format (taken as it is, as docker does with a custom profile). `program` turns that into the
BPF bytes the child loads, compiled once per builder process and profile.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from stepbuild.errors import BuildError, UsageError

if TYPE_CHECKING:
    from collections.abc import Iterable

DEFAULT, UNCONFINED = "default", "unconfined"
DEFAULT_PROFILE = "/usr/share/containers/seccomp.json"  # Debian golang-github-containers-common

_compiled: dict[tuple[str, int, int], bytes] = {}  # (path, mtime_ns, size) -> program


class SeccompUnavailable(BuildError):
    """No filter can be made for a confined step: RUN steps are refused rather than run bare."""


def parse_security_opts(values: Iterable[str]) -> str:
    """`--security-opt` values -> the seccomp setting (the last one wins, as in docker).
    Only seccomp= is supported; a profile path must be a readable file."""
    setting = DEFAULT
    for value in values:
        key, sep, rest = value.partition("=")
        if key != "seccomp" or not sep or not rest:
            raise UsageError(f"--security-opt {value}: only seccomp=unconfined|PROFILE.json "
                             "is supported")
        setting = rest if rest in (UNCONFINED, DEFAULT) else os.path.abspath(rest)
        if setting not in (UNCONFINED, DEFAULT) and not os.path.isfile(setting):
            raise UsageError(f"--security-opt {value}: no such profile file")
    return setting


def program(setting: str) -> bytes | None:
    """The BPF program for `setting`, None for "unconfined". Raises SeccompUnavailable when
    the profile or libseccomp is missing, or the profile is not one we can compile."""
    if setting == UNCONFINED:
        return None
    path = DEFAULT_PROFILE if setting == DEFAULT else setting
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SeccompUnavailable(_refusal(f"{path}: {exc.strerror}")) from None
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _compiled:
        _compiled[key] = _compile(path, harden=setting == DEFAULT)
    return _compiled[key]


def _compile(path: str, *, harden: bool) -> bytes:
    from stepbuild.sandbox import libseccomp, seccomp_profile
    from stepbuild.sandbox.spec import DOCKER_DEFAULT_CAPS

    uname = os.uname()
    try:
        host = seccomp_profile.Host(frozenset(f"CAP_{c}" for c in DOCKER_DEFAULT_CAPS),
                                    uname.machine, seccomp_profile.kernel_version(uname.release))
        policy = seccomp_profile.resolve(seccomp_profile.load(path), host)
        return libseccomp.compile_bpf(seccomp_profile.harden(policy) if harden else policy)
    except OSError as exc:  # unreadable, no libseccomp, or a rule libseccomp refused
        raise SeccompUnavailable(_refusal(f"{path}: {exc.strerror or exc}")) from None
    except seccomp_profile.ProfileError as exc:
        raise SeccompUnavailable(_refusal(f"{path}: {exc}")) from None


def _refusal(reason: str) -> str:
    return (f"no seccomp filter for RUN ({reason}): install containers-common and libseccomp2,"
            " or pass --security-opt seccomp=unconfined to run steps without one")
