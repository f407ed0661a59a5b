"""`--secret` and `--ssh` build options, and what a step's secrets become.

The options are parsed when the build starts (a missing file is a usage error before any
step runs); a secret's value is read only when a step that mounts it runs, written to a
file in the step's private tmpfs (`realise`) or put in the step's environment, never into a
cache key, a layer or the store.
"""

from __future__ import annotations

import csv
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stepbuild.errors import BuildError, UsageError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from stepbuild.build.mounts.plan import PlannedMount

SECRET_MAX = 500 * 1024  # BuildKit refuses bigger secrets too


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where a `--secret` value comes from: a file (`kind` "file", `ref` its path) or an
    environment variable of the builder (`kind` "env", `ref` its name). Read at use time."""

    kind: str
    ref: str

    def read(self) -> bytes:
        if self.kind == "env":
            value = os.environ.get(self.ref)
            if value is None:
                raise BuildError(f"secret environment variable {self.ref} is not set")
            data = os.fsencode(value)
        else:
            try:
                with open(self.ref, "rb") as f:
                    data = f.read(SECRET_MAX + 1)
            except OSError as exc:
                raise BuildError(f"cannot read secret file {self.ref}: {exc.strerror}") from None
        if len(data) > SECRET_MAX:
            raise BuildError(f"secret from {self.ref} is larger than {SECRET_MAX} bytes")
        return data


def parse_secret(value: str) -> tuple[str, SecretSource]:
    """`--secret id=ID[,src=FILE|,env=VAR][,type=file|env]` (buildx's syntax).

    With neither `src` nor `env`, the value is the environment variable named like the id
    (docker build's `--secret id=API_TOKEN`). Raises UsageError.
    """
    fields: dict[str, str] = {}
    for item in _csv_fields(value, "--secret"):
        key, eq, val = item.partition("=")
        key = {"source": "src"}.get(key.strip().lower(), key.strip().lower())
        if not eq or key not in ("id", "src", "env", "type"):
            raise UsageError(f"invalid --secret {value!r}: unexpected {item!r}",
                             hint="use --secret id=NAME,src=FILE or --secret id=NAME,env=VAR")
        fields[key] = val
    kind = fields.get("type") or ("file" if "src" in fields else "env")
    ident = fields.get("id") or (posixpath.basename(fields["src"]) if "src" in fields else "")
    if not ident or kind not in ("file", "env"):
        raise UsageError(f"invalid --secret {value!r}: it needs an id (and type file or env)")
    if kind == "file":
        path = fields.get("src", "")
        if not os.path.isfile(path):
            raise UsageError(f"--secret {ident}: {path!r} is not a readable file")
        return ident, SecretSource("file", os.path.abspath(path))
    return ident, SecretSource("env", fields.get("env") or fields.get("src") or ident)


def parse_ssh(value: str) -> tuple[str, str]:
    """`--ssh default` ($SSH_AUTH_SOCK) or `--ssh ID=SOCKET`: (id, absolute socket path).

    Only agent sockets: BuildKit also takes private key files, which need an agent of our
    own; load the key into ssh-agent and pass its socket instead. Raises UsageError.
    """
    ident, eq, path = value.partition("=")
    if not ident or "," in path or (eq and not path):
        raise UsageError(f"invalid --ssh {value!r}", hint="use --ssh default or --ssh ID=SOCKET")
    if not eq:
        path = os.environ.get("SSH_AUTH_SOCK", "")
        if not path:
            raise UsageError(f"--ssh {ident}: SSH_AUTH_SOCK is not set",
                             hint="start ssh-agent, or give the socket: --ssh ID=SOCKET")
    try:
        is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError as exc:
        raise UsageError(f"--ssh {ident}: {path}: {exc.strerror}") from None
    if not is_socket:
        raise UsageError(f"--ssh {ident}: {path} is not a socket",
                         hint="only agent sockets are supported: ssh-add the key and pass"
                              " $SSH_AUTH_SOCK")
    return ident, os.path.abspath(path)


def _csv_fields(text: str, what: str) -> list[str]:
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise UsageError(f"malformed {what} value {text!r}: {exc}") from None
    return [item for item in (rows[0] if rows else []) if item]


# --- a step's secrets ---------------------------------------------------------------------------


def write_secret(path: Path, data: bytes, *, uid: int, gid: int, mode: int) -> None:
    """Create the file `path` (it must not exist) holding `data`, owned uid:gid, with `mode`.

    The file is made 0600 and given its owner and mode only once written, so that no one but
    the builder can read it half-written.
    """
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def secret_env(planned: Sequence[PlannedMount]) -> list[str]:
    """The "NAME=value" entries of the secrets `planned` exports as environment variables
    (`env=`) and the build was given. Reads their values; raises BuildError."""
    extra = []
    for p in planned:
        if p.type == "secret" and p.env and p.secret is not None:
            value = os.fsdecode(p.secret.read())
            if "\0" in value:
                raise BuildError(f"secret {p.cache_id!r} holds a NUL byte: it cannot be an"
                                 " environment variable")
            extra.append(f"{p.env}={value}")
    return extra
