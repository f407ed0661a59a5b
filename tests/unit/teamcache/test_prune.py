"""teamcache/prune.py: which keys a prune keeps — by age, by size, least recently used first,
a writer's newest export never dropped for space, and shared blobs freed only with their
last user."""

from __future__ import annotations

from stepbuild.teamcache.prune import Entry, Policy, plan, unique_bytes


def blob(n: int) -> str:
    return f"sha256:{n:064x}"


def entry(name: str, used: float, *blobs: tuple[int, int], newest: bool = False) -> Entry:
    return Entry(name, used, tuple((blob(n), size) for n, size in blobs), newest)


ENTRIES = [
    entry("old", 100, (1, 1000), (9, 50)),
    entry("middle", 200, (2, 300)),
    entry("shared-old", 150, (9, 50)),  # blob 9 is also the old key's
    entry("newest", 300, (3, 400), newest=True),
    entry("empty", 250),  # a step without a layer (ENV, WORKDIR…)
]


def test_no_policy_keeps_everything() -> None:
    result = plan(ENTRIES, Policy())
    assert result.drop == () and result.freed == 0
    assert result.total == unique_bytes(ENTRIES) == 1750  # blob 9 counted once


def test_until_drops_what_was_last_used_before_it() -> None:
    result = plan(ENTRIES, Policy(until=160))
    assert [e.name for e in result.drop] == ["old", "shared-old"]
    assert result.freed_blobs == {blob(1), blob(9)} and result.freed == 1050


def test_a_blob_another_kept_key_needs_is_not_freed() -> None:
    result = plan(ENTRIES, Policy(until=120))
    assert [e.name for e in result.drop] == ["old"]
    assert result.freed_blobs == {blob(1)} and result.freed == 1000  # blob 9 stays


def test_keep_storage_drops_least_recently_used_first() -> None:
    result = plan(ENTRIES, Policy(keep_storage=750))
    # old (100) frees blob 1 but not blob 9 (shared-old still needs it): 750 left
    assert [e.name for e in result.drop] == ["old"]
    assert result.after == 750


def test_keep_storage_never_drops_a_writers_newest_export() -> None:
    result = plan(ENTRIES, Policy(keep_storage=0))
    assert {e.name for e in result.keep} == {"newest", "empty"}
    assert result.after == 400  # over the limit: the newest export is worth more


def test_until_drops_even_the_newest_export() -> None:
    result = plan(ENTRIES, Policy(until=1000, keep_storage=10**9))
    assert result.keep == () and result.after == 0
