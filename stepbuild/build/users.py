"""USER and --chown: names → numeric ids, read from the image's own /etc/passwd and /etc/group.

Pure parsing here; the caller reads the files inside the image's root (never the host's, and
never through NSS: docs/security.md rule 9). Docker's rules: `user`, `user:group`, `uid`, `uid:gid`;
a user given by name takes its primary group from passwd unless a group is named; a numeric
uid that is not in passwd is allowed (gid 0); a name that is not found is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from stepbuild.errors import StepbuildError


class UserError(StepbuildError):
    """A user or group name is not in the image."""


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
        int(fields[1]) for fields in groups.values()
        if name and len(fields) > 2 and name in fields[2].split(",") and fields[1].isdigit()
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
    if part.isdigit():
        uid = int(part)
        for name, entry in users.items():
            if entry[1] == part and entry[2].isdigit():
                return uid, int(entry[2]), name
        return uid, 0, None
    fields = users.get(part)
    if fields is None or not fields[1].isdigit():
        raise UserError(f"unable to find user {part}: no matching entries in passwd file",
                        hint="create the user in an earlier RUN step, or use a numeric uid")
    gid = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else 0
    return int(fields[1]), gid, part


def _lookup_group(part: str, groups: dict[str, list[str]]) -> int:
    if part.isdigit():
        return int(part)
    fields = groups.get(part)
    if fields is None or not fields[1].isdigit():
        raise UserError(f"unable to find group {part}: no matching entries in group file")
    return int(fields[1])
