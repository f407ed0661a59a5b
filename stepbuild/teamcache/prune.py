"""What `stepbuild cache ls|du|prune` decides about a team cache: pure, no I/O.

A backend (`local.py`'s `LocalDir.inventory`, `registry_prune.py`) lists the cache as
`Entry` values — one per step key or cache-mount record, with when it was last exported, the
blobs it needs and whether it belongs to the newest export of some writer — and `plan` says
which to keep and which to drop under a `Policy`:

- `until`: an entry last used before this time is dropped, whatever else holds;
- `keep_storage`: then, while the blobs of the kept entries add up to more than this, the
  least recently used entry is dropped — except an entry of a writer's newest export (the
  build a colleague or a runner just made: the next one most likely needs every step of it)
  and one without a blob (an ENV or WORKDIR step: dropping it frees nothing).

A blob is freed only when no kept entry names it: layers shared between keys stay while any
of them does. The backend then deletes what the plan drops (`Plan.drop`, `Plan.freed_blobs`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["Entry", "Plan", "Policy", "plan", "unique_bytes"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One record of a team cache.

    `name`: the step key (or `cache-mounts/<hash>`); `used`: seconds since the epoch of its
    last export; `blobs`: (digest, size) of each blob it needs; `newest`: it is part of the
    newest export of at least one writer; `writers`: where it was found (writer tags, writer
    ids); `created_by`: the step's text, for `ls`."""

    name: str
    used: float
    blobs: tuple[tuple[str, int], ...]
    newest: bool = False
    writers: tuple[str, ...] = ()
    created_by: str = ""

    @property
    def size(self) -> int:
        return sum(size for _digest, size in self.blobs)


@dataclass(frozen=True, slots=True)
class Policy:
    """`until`: drop what was last used before this time (epoch seconds; None: no age limit).
    `keep_storage`: the bytes of blobs to keep at most (None: no size limit)."""

    until: float | None = None
    keep_storage: int | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """The outcome: entries kept and dropped, the blobs only dropped entries named (freed)
    and the bytes before and after."""

    keep: tuple[Entry, ...]
    drop: tuple[Entry, ...]
    freed_blobs: frozenset[str] = field(default_factory=frozenset)
    total: int = 0
    after: int = 0

    @property
    def freed(self) -> int:
        return self.total - self.after


def unique_bytes(entries: Iterable[Entry]) -> int:
    """The bytes of the blobs `entries` name, each blob once."""
    return sum(dict(blob for entry in entries for blob in entry.blobs).values())


def plan(entries: Sequence[Entry], policy: Policy) -> Plan:
    """Which entries to keep and drop under `policy` (the module docstring says how)."""
    ordered = sorted(entries, key=lambda e: (e.used, e.name))  # least recently used first
    drop = {e.name for e in ordered if policy.until is not None and e.used < policy.until}
    kept = [e for e in ordered if e.name not in drop]
    if policy.keep_storage is not None:
        drop |= _over_size(kept, policy.keep_storage)
    keep = tuple(e for e in ordered if e.name not in drop)
    dropped = tuple(e for e in ordered if e.name in drop)
    still = {digest for e in keep for digest, _ in e.blobs}
    freed = frozenset(digest for e in dropped for digest, _ in e.blobs if digest not in still)
    return Plan(keep, dropped, freed, unique_bytes(entries), unique_bytes(keep))


def _over_size(kept: Sequence[Entry], limit: int) -> set[str]:
    """Names to drop, least recently used first, until the blobs of the rest fit `limit`;
    a writer's newest export is never among them."""
    users: Counter[str] = Counter(digest for e in kept for digest, _ in e.blobs)
    sizes = dict(blob for e in kept for blob in e.blobs)
    total = sum(sizes.values())
    drop: set[str] = set()
    for entry in kept:  # already least recently used first
        if total <= limit:
            break
        if entry.newest or not entry.blobs:  # (a record without a blob frees nothing)
            continue
        drop.add(entry.name)
        for digest, size in entry.blobs:
            users[digest] -= 1
            if users[digest] == 0:
                total -= size
    return drop
