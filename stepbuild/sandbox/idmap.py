"""The id maps of the rootless builder's user namespace, as data — no syscalls here.

Container id 0 is the user's own id; 1..N are the user's subordinate ids from /etc/subuid and
/etc/subgid (subuid(5)), in file order, as rootless podman and buildah map them. A user with no
ranges gets a one-id map, 0 → the user's id: every file is then owned by 0:0 and a chown to
any other id fails (`fs/userns.unmapped_message` says why).

Root without CAP_SYS_ADMIN (an unprivileged container's root) needs no subordinate ids: it
holds CAP_SETUID and CAP_SETGID over its own user namespace, so it may write any map of the
ids that namespace has (user_namespaces(7), "Defining user and group ID mappings", rule 4b).
`identity_maps` maps each of them to itself, as Buildah does in such a pod: files keep the
owners they have outside, and every id an image may use is there.

`userns.py` applies a map: with `newuidmap`/`newgidmap` (setuid helpers from Debian's uidmap
package, which check the ranges against the same files) for a user's full map, by writing
/proc/PID/uid_map itself for a one-id map, which needs no privilege, or for root's identity
map, which needs only the capabilities container root keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IdMaps", "build_maps", "identity_maps", "parse_subids"]

MAX_ID = 2**32 - 2  # 2**32 - 1 is the "no id" value, never mapped


@dataclass(frozen=True, slots=True)
class IdMaps:
    """The uid and gid maps of one user namespace: (inside, outside, count) triples.

    `full` is True when more than the caller's own id is mapped (a user's subordinate
    ranges, root's identity map), False for the one-id fallback (written directly, with
    setgroups denied first, as the kernel requires of an unprivileged gid map). `privileged`:
    the caller may write a full map itself (root with CAP_SETUID and CAP_SETGID); otherwise
    newuidmap/newgidmap write it."""

    uids: tuple[tuple[int, int, int], ...]
    gids: tuple[tuple[int, int, int], ...]
    full: bool
    privileged: bool = False

    def helper_args(self, pid: int) -> tuple[list[str], list[str]]:
        """newuidmap's and newgidmap's arguments (after the program name) for process `pid`."""
        return ([str(pid), *_flat(self.uids)], [str(pid), *_flat(self.gids)])

    @staticmethod
    def file_text(ranges: tuple[tuple[int, int, int], ...]) -> str:
        """What to write to /proc/PID/uid_map or gid_map (one line per range)."""
        return "".join(f"{inside} {outside} {count}\n" for inside, outside, count in ranges)


def _flat(ranges: tuple[tuple[int, int, int], ...]) -> list[str]:
    return [str(n) for triple in ranges for n in triple]


def parse_subids(text: str, user: str, uid: int) -> list[tuple[int, int]]:
    """The (first, count) ranges /etc/subuid (or subgid) gives `user` (named, or by its
    numeric id, as shadow's tools accept), in file order. Comments, blank and malformed lines
    are ignored, as newuidmap ignores them; so are empty ranges and ranges past MAX_ID."""
    ranges = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) != 3 or fields[0] not in (user, str(uid)):
            continue
        if not (fields[1].isdigit() and fields[2].isdigit()):
            continue
        first, count = int(fields[1]), int(fields[2])
        if count > 0 and first + count - 1 <= MAX_ID:
            ranges.append((first, count))
    return ranges


def build_maps(uid: int, gid: int, subuids: list[tuple[int, int]],
               subgids: list[tuple[int, int]]) -> IdMaps:
    """0 → uid (gid), then each subordinate range from 1 on. Without ranges for uids or for
    gids: the one-id map for both (a partial map would leave files the build makes owned by
    ids the other map cannot name)."""
    if not subuids or not subgids:
        return IdMaps(((0, uid, 1),), ((0, gid, 1),), full=False)
    return IdMaps(_stack(uid, subuids), _stack(gid, subgids), full=True)


def identity_maps(uids: tuple[tuple[int, int, int], ...],
                  gids: tuple[tuple[int, int, int], ...]) -> IdMaps:
    """Root's map: every id of the caller's own maps (/proc/self/uid_map, gid_map, as
    (inside, outside, count)) mapped to itself — all of 0..2**32-2 on a host or in a
    container without a user namespace, 0..65535 in one that maps only those."""
    def same(ranges: tuple[tuple[int, int, int], ...]) -> tuple[tuple[int, int, int], ...]:
        return tuple((inside, inside, count) for inside, _, count in sorted(ranges))

    return IdMaps(same(uids), same(gids), full=True, privileged=True)


def _stack(own: int, ranges: list[tuple[int, int]]) -> tuple[tuple[int, int, int], ...]:
    triples = [(0, own, 1)]
    inside = 1
    for first, count in ranges:
        count = min(count, MAX_ID + 1 - inside)  # the inside ids end where ids do
        if count <= 0:
            break
        triples.append((inside, first, count))
        inside += count
    return tuple(triples)
