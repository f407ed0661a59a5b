"""USER and --chown: names → numeric ids, read from the image's own /etc/passwd and /etc/group.

Pure parsing here; the caller reads the files inside the image's root (never the host's, and
never through NSS: docs/security.md rule 9). Docker's rules: `user`, `user:group`, `uid`, `uid:gid`;
a user given by name takes its primary group from passwd unless a group is named; a numeric
uid that is not in passwd is allowed (gid 0); a name that is not found is an error.
An id must be 0..4294967294: the kernel's uid_t and gid_t are 32-bit and (uid_t)-1 means
"no change" to setuid/chown, so 4294967295 is refused too.
"""

from __future__ import annotations

from dataclasses import dataclass

from stepbuild.errors import StepbuildError


class UserError(StepbuildError):
    """A user or group name is not in the image, or an id is out of range."""


MAX_ID = 4294967294  # (uid_t)-1 - 1: the largest id setuid(2) and chown(2) accept


def is_numeric(text: str) -> bool:
    """Whether `text` is an id rather than a name: ASCII digits only (str.isdigit alone also
    takes "²", which int() refuses)."""
    return text.isascii() and text.isdigit()


def numeric_id(text: str, what: str) -> int:
    """A decimal uid or gid (`what` is "uid" or "gid"); UserError when out of range."""
    value = int(text)
    if value > MAX_ID:
        raise UserError(f"{what} {text} is out of range: ids are 0 to {MAX_ID}")
    return value


@dataclass(frozen=True, slots=True)
class Ids:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()   # supplementary groups (from /etc/group membership)
    home: str = "/"                # the passwd home dir: HOME when the image sets none


def resolve(spec: str, passwd: str, group: str) -> Ids:
    """Resolve a USER/--chown value. Raises UserError for an unknown name."""
    user_part, _, group_part = spec.partition(":")
    users = _table(passwd)
    groups = _table(group)
    uid, primary_gid, name = _lookup_user(user_part, users)
    home = users[name][4] if name and len(users[name]) > 4 and users[name][4] else "/"
    gid = _lookup_group(group_part, groups) if group_part else primary_gid
    supplementary = tuple(sorted({
        numeric_id(fields[1], "gid") for fields in groups.values()
        if name and len(fields) > 2 and name in fields[2].split(",") and is_numeric(fields[1])
    } - {gid})) if not group_part else ()
    return Ids(uid, gid, supplementary, home)


def _table(text: str) -> dict[str, list[str]]:
    """name → the fields after the name (passwd: x, uid, gid, ...; group: x, gid, members)."""
    entries: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] not in entries:
            entries[fields[0]] = fields[1:]
    return entries


def _lookup_user(part: str, users: dict[str, list[str]]) -> tuple[int, int, str | None]:
    if is_numeric(part):
        uid = numeric_id(part, "uid")
        for name, entry in users.items():
            if entry[1] == part and is_numeric(entry[2]):
                return uid, numeric_id(entry[2], "gid"), name
        return uid, 0, None
    fields = users.get(part)
    if fields is None or not is_numeric(fields[1]):
        raise UserError(f"unable to find user {part}: no matching entries in passwd file",
                        hint="create the user in an earlier RUN step, or use a numeric uid")
    gid = numeric_id(fields[2], "gid") if len(fields) > 2 and is_numeric(fields[2]) else 0
    return numeric_id(fields[1], "uid"), gid, part


def _lookup_group(part: str, groups: dict[str, list[str]]) -> int:
    if is_numeric(part):
        return numeric_id(part, "gid")
    fields = groups.get(part)
    if fields is None or not is_numeric(fields[1]):
        raise UserError(f"unable to find group {part}: no matching entries in group file")
    return numeric_id(fields[1], "gid")
