"""The rootless user namespace's id maps (stepbuild/sandbox/idmap.py): /etc/subuid parsed,
maps built, newuidmap's arguments and the /proc map text."""

from __future__ import annotations

from stepbuild.sandbox.idmap import MAX_ID, IdMaps, build_maps, identity_maps, parse_subids

SUBUID = """\
# comment
alice:100000:65536
bob:165536:65536

1001:300000:10
alice:500000:1000
alice:bad:10
alice:600000:0
alice:700000
carol:200000:65536:extra
alice:4294967290:100
"""


def test_ranges_of_a_user_by_name_and_by_uid_in_file_order() -> None:
    assert parse_subids(SUBUID, "alice", 1001) == [(100000, 65536), (300000, 10),
                                                  (500000, 1000)]
    assert parse_subids(SUBUID, "bob", 1002) == [(165536, 65536)]


def test_no_ranges_for_an_unknown_user_or_an_empty_file() -> None:
    assert parse_subids(SUBUID, "dave", 1004) == []
    assert parse_subids("", "alice", 1001) == []


def test_malformed_empty_and_out_of_range_lines_are_ignored() -> None:
    assert parse_subids("carol:200000:65536:extra\nalice:600000:0\n", "carol", 1) == []
    assert parse_subids("alice:4294967290:100\n", "alice", 1) == []


def test_full_map_puts_the_user_at_0_and_the_ranges_after() -> None:
    maps = build_maps(1001, 1001, [(100000, 65536), (500000, 1000)], [(200000, 65536)])
    assert maps.full
    assert maps.uids == ((0, 1001, 1), (1, 100000, 65536), (65537, 500000, 1000))
    assert maps.gids == ((0, 1001, 1), (1, 200000, 65536))


def test_no_ranges_for_either_side_gives_the_one_id_map_for_both() -> None:
    for uids, gids in (([], [(200000, 10)]), ([(100000, 10)], []), ([], [])):
        maps = build_maps(1001, 1002, uids, gids)
        assert not maps.full
        assert maps.uids == ((0, 1001, 1),) and maps.gids == ((0, 1002, 1),)


def test_a_huge_range_is_cut_where_ids_end() -> None:
    maps = build_maps(1000, 1000, [(1, MAX_ID), (5, 5)], [(1, 10)])
    assert maps.uids == ((0, 1000, 1), (1, 1, MAX_ID))


def test_helper_arguments_and_map_file_text() -> None:
    maps = IdMaps(((0, 1001, 1), (1, 100000, 65536)), ((0, 1001, 1),), full=True)
    assert maps.helper_args(42) == (["42", "0", "1001", "1", "1", "100000", "65536"],
                                    ["42", "0", "1001", "1"])
    assert IdMaps.file_text(maps.uids) == "0 1001 1\n1 100000 65536\n"


def test_roots_identity_map_maps_every_id_it_has_to_itself() -> None:
    host = ((0, 0, 2**32 - 1),)
    maps = identity_maps(host, host)
    assert maps.uids == maps.gids == ((0, 0, 2**32 - 1),)
    assert maps.full and maps.privileged
    assert maps.file_text(maps.uids) == "0 0 4294967295\n"


def test_roots_identity_map_inside_a_mapped_container_keeps_its_own_ids() -> None:
    """A container already in a user namespace (0..65535 → 100000..): inside ids, to
    themselves, as the writer names them."""
    maps = identity_maps(((1, 100001, 65535), (0, 100000, 1)), ((0, 100000, 65536),))
    assert maps.uids == ((0, 0, 1), (1, 1, 65535))
    assert maps.gids == ((0, 0, 65536),)


def test_a_users_maps_are_not_privileged() -> None:
    assert not build_maps(1001, 1001, [(100000, 65536)], [(100000, 65536)]).privileged
    assert not build_maps(1001, 1001, [], []).privileged
