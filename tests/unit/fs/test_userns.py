"""What stepbuild/fs/userns.py tells from the id maps: inside a user namespace or not,
which owners are mapped, and the message for those that are not."""

from __future__ import annotations

import pytest

from stepbuild.fs import userns

ONE_ID = ((0, 1001, 1),)
RANGED = ((0, 1001, 1), (1, 100000, 65536))
HOST = ((0, 0, 2**32 - 1),)


def _maps(monkeypatch: pytest.MonkeyPatch, uids: tuple[userns.IdRange, ...],
          gids: tuple[userns.IdRange, ...]) -> None:
    monkeypatch.setattr(userns, "_own_map", lambda kind: uids if kind == "uid" else gids)


def test_parse_id_map_reads_procs_columns() -> None:
    assert userns.parse_id_map("         0       1001          1\n"
                               "         1     100000      65536\n") == RANGED
    assert userns.parse_id_map("") == ()
    with pytest.raises(ValueError):
        userns.parse_id_map("0 1001\n")


def test_mapped_count_counts_contiguous_ids_from_zero() -> None:
    assert userns.mapped_count(ONE_ID) == 1
    assert userns.mapped_count(RANGED) == 65537
    assert userns.mapped_count(((5, 100, 10),)) == 0  # 0 unmapped: nothing usable from 0
    assert userns.mapped_count(HOST) == 2**32 - 1


def test_the_host_namespace_is_not_a_user_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(userns, "_user_ns_inode", lambda: None)  # no /proc/self/ns: the map
    _maps(monkeypatch, HOST, HOST)
    assert not userns.in_user_namespace()
    assert userns.owner_mapped(70000, 5)
    _maps(monkeypatch, RANGED, RANGED)
    assert userns.in_user_namespace()


def test_the_namespace_inode_tells_an_identity_map_from_the_host(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Container root's own user namespace maps every id to itself, as the host's does."""
    _maps(monkeypatch, HOST, HOST)
    monkeypatch.setattr(userns, "_user_ns_inode", lambda: 0xEFFFFFFD)  # PROC_USER_INIT_INO
    assert not userns.in_user_namespace()
    monkeypatch.setattr(userns, "_user_ns_inode", lambda: 4026532174)
    assert userns.in_user_namespace()
    assert userns.owner_mapped(70000, 5)


def test_this_process_is_in_the_hosts_user_namespace() -> None:
    """The unit suite runs on the host (as root or not): the real inode is the initial one."""
    userns._user_ns_inode.cache_clear()
    assert userns._user_ns_inode() == 0xEFFFFFFD
    assert not userns.in_user_namespace()


def test_owner_mapped_needs_both_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    _maps(monkeypatch, RANGED, ONE_ID)
    assert userns.owner_mapped(5, 0)
    assert not userns.owner_mapped(0, 5)
    assert not userns.owner_mapped(65537, 0)


def test_unmapped_message_names_the_subid_files(monkeypatch: pytest.MonkeyPatch) -> None:
    _maps(monkeypatch, ONE_ID, ONE_ID)
    text = userns.unmapped_message("5:5")
    assert "5:5" in text and "only 0:0 is mapped" in text and "/etc/subuid" in text
    _maps(monkeypatch, RANGED, RANGED)
    text = userns.unmapped_message("70000:0")
    assert "only ids 0-65536 are mapped" in text and "/etc/subuid" in text
