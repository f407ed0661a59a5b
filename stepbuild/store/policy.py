"""Which cache records a prune removes: least recently used first, as BuildKit's prune does.

Pure: gc.py gathers the facts (each record's last use and the content it keeps, the size of
every blob and layer, what the tags pin) and deletes what `choose` picked.

A record's *last use* is its file's mtime: written when the step ran, refreshed by every cache
hit (records.CacheRecords.get). "In use" means: used within the window (`--filter
until=DURATION`; 48 hours when neither `--keep-storage` nor `--all` is given, so a builder
stage that any build of the last two days hit survives a default prune), or, with
`--keep-storage SIZE`, among the most recently used records that fit in SIZE. Two days,
because a runner's builds of one project come daily at least, and a laptop's weekend pause
then costs one rebuild, not a growing store. A record whose content the tags keep anyway
frees nothing, so it stays (its tagged image rebuilds from cache) unless `--all`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["DEFAULT_UNUSED_FOR", "Choice", "Policy", "RecordUse", "choose"]

DEFAULT_UNUSED_FOR = 48 * 3600.0  # seconds: a default prune keeps what was used within


@dataclass(frozen=True, slots=True)
class Policy:
    """What a prune keeps. `keep_storage`: bytes the store may keep (`--keep-storage`);
    `unused_for`: seconds a record must be unused to go (`--filter until=`); `everything`:
    every record may go, the tagged images' too (`--all`)."""

    keep_storage: int | None = None
    unused_for: float | None = None
    everything: bool = False

    def window(self) -> float | None:
        """The `until` in force: the one given, else the default when nothing else limits."""
        if self.unused_for is not None:
            return self.unused_for
        if self.keep_storage is None and not self.everything:
            return DEFAULT_UNUSED_FOR
        return None


@dataclass(frozen=True, slots=True)
class RecordUse:
    """One cache record as the policy sees it: its key, last use (seconds since the epoch),
    the content it keeps (hex names of its layers and blobs) and its own file's bytes."""

    key: str
    last_used: float
    content: frozenset[str]
    size: int = 0


@dataclass(frozen=True, slots=True)
class Choice:
    """The records to remove (least recently used first) and the store's size after the
    prune (bytes on disk): the whole store less what goes."""

    evicted: tuple[str, ...]
    projected: int


def choose(records: Iterable[RecordUse], *, pinned: set[str], sizes: dict[str, int],
           garbage: int, total: int, policy: Policy, now: float) -> Choice:
    """Pick the records to remove under `policy` at time `now`.

    `pinned`: the content the tags keep. `sizes`: the bytes each piece of content frees when
    nothing keeps it. `garbage`: the bytes the prune frees anyway (content no record or tag
    keeps, stale temporary files). `total`: the store's size now. Ties in last use go by key,
    so the choice is deterministic.
    """
    records = sorted(records, key=lambda r: (r.last_used, r.key))
    refs = Counter(c for r in records for c in r.content - pinned)
    projected = total - garbage
    window = policy.window()
    evicted = []
    for record in records:
        if policy.keep_storage is not None and projected <= policy.keep_storage:
            break
        if window is not None and record.last_used > now - window:
            continue
        if not policy.everything and record.content <= pinned:
            continue
        evicted.append(record.key)
        projected -= record.size
        for content in record.content - pinned:
            refs[content] -= 1
            if refs[content] == 0:
                projected -= sizes.get(content, 0)
    return Choice(tuple(evicted), projected)
