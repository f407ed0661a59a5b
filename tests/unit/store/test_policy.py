"""store/policy.py: which cache records a prune removes (least recently used first)."""

from __future__ import annotations

from stepbuild.store.policy import DEFAULT_UNUSED_FOR, Policy, RecordUse, choose

NOW = 1_000_000_000.0
HOUR = 3600.0
# content a..e, 100 bytes each; "base" is pinned by a tag
SIZES = {name: 100 for name in "abcde"} | {"base": 1000}


def use(key: str, hours_ago: float, *content: str, size: int = 1) -> RecordUse:
    return RecordUse(key, NOW - hours_ago * HOUR, frozenset(content), size)


RECORDS = [
    use("old", 100, "a"),          # unused for 100 h
    use("older", 200, "b", "c"),   # the least recently used
    use("shared1", 10, "d"),       # d kept by two records
    use("shared2", 1, "d"),
    use("recent", 0.5, "e"),
    use("tagged", 300, "base"),    # its content is the tag's anyway
]
TOTAL = 1000 + 500 + 6  # content + record files


def pick(policy: Policy, garbage: int = 0) -> tuple[tuple[str, ...], int]:
    choice = choose(RECORDS, pinned={"base"}, sizes=SIZES, garbage=garbage, total=TOTAL,
                    policy=policy, now=NOW)
    return choice.evicted, choice.projected


def test_default_window_removes_records_unused_for_48_hours() -> None:
    assert Policy().window() == DEFAULT_UNUSED_FOR == 48 * HOUR
    assert pick(Policy()) == (("older", "old"), TOTAL - 300 - 2)


def test_until_filter_sets_the_window() -> None:
    assert pick(Policy(unused_for=5 * HOUR)) == (("older", "old", "shared1"), TOTAL - 300 - 3)


def test_content_two_records_keep_goes_with_the_last_of_them() -> None:
    evicted, projected = pick(Policy(unused_for=0.75 * HOUR))
    assert evicted == ("older", "old", "shared1", "shared2")
    assert projected == TOTAL - 400 - 4


def test_keep_storage_stops_once_under_the_size_least_recently_used_first() -> None:
    # 1506 bytes; the garbage (50) goes anyway; "older" frees 201 → 1255, "old" 101 → 1154
    assert pick(Policy(keep_storage=1200), garbage=50) == (("older", "old"), 1154)
    assert pick(Policy(keep_storage=1456), garbage=50) == ((), 1456)  # already under


def test_keep_storage_alone_has_no_window() -> None:
    evicted, projected = pick(Policy(keep_storage=0))
    assert evicted == ("older", "old", "shared1", "shared2", "recent")
    assert projected == 1000 + 1  # the tag's content and the tagged record stay


def test_keep_storage_with_a_filter_removes_only_what_the_filter_allows() -> None:
    assert pick(Policy(keep_storage=0, unused_for=48 * HOUR)) == (("older", "old"),
                                                                   TOTAL - 300 - 2)


def test_all_removes_the_tagged_images_records_too() -> None:
    evicted, projected = pick(Policy(everything=True))
    assert evicted == ("tagged", "older", "old", "shared1", "shared2", "recent")
    assert projected == 1000  # the tag keeps its content


def test_ties_go_by_key() -> None:
    records = [use("b", 5, "b"), use("a", 5, "a")]
    choice = choose(records, pinned=set(), sizes=SIZES, garbage=0, total=202,
                    policy=Policy(keep_storage=150), now=NOW)
    assert choice.evicted == ("a",)
