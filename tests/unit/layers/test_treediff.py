"""layers/treediff.py: a tree's snapshot, and the diff overlay would have recorded (issue 13,
chroot isolation; docs/security.md family F).

The diff is pure: most cases feed it made-up entries. `snapshot` is tried on real trees under
tmp_path (hard links, xattrs, symlinks, fifos, a tree deeper than PATH_MAX); the end to end
check, the same change giving the same layer bytes as a real overlay, is
tests/integration/test_chroot_capture.py.
"""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from stepbuild.layers.treediff import (
    ROOT,
    Action,
    Change,
    Entry,
    diff,
    needed_dirs,
    snapshot,
)
from tests.deeptrees import LEVELS, fast_tmp_dir, nest

# =============================================================================================
# made-up entries

INO = iter(range(100, 10_000))


def d(mode: int = 0o755, **kw: object) -> Entry:
    return Entry(stat.S_IFDIR, mode, 0, 0, 1_000, ino=next(INO), **kw)  # type: ignore[arg-type]


def f(data: str = "x", mode: int = 0o644, **kw: object) -> Entry:
    fields: dict[str, object] = {"size": len(data), "digest": f"h-{data}", "ino": next(INO),
                                 "ctime_ns": 5, **kw}
    return Entry(stat.S_IFREG, mode, 0, 0, 1_000, **fields)  # type: ignore[arg-type]


def link(target: bytes) -> Entry:
    return Entry(stat.S_IFLNK, 0o777, 0, 0, 1_000, target=target, ino=next(INO))


def tree(**entries: Entry) -> dict[bytes, Entry]:
    """Keyword names with `__` for `/`: tree(a=d(), a__b=f())."""
    out = {ROOT: Entry(stat.S_IFDIR, 0o755, 0, 0, 1, ino=1)}
    out.update({k.replace("__", "/").encode(): v for k, v in entries.items()})
    return out


def actions(changes: list[Change]) -> list[tuple[str, str]]:
    return [(c.path.decode(), c.action.value) for c in changes]


# =============================================================================================
# diff


def test_nothing_changed_gives_no_change() -> None:
    before = tree(a=d(), a__b=f(), c=link(b"a/b"))
    assert diff(before, dict(before)) == []


def test_a_new_file_and_a_new_dir_with_all_it_holds_are_put() -> None:
    before = tree(a=d())
    after = {**before, b"a/new": f(), b"n": d(), b"n/m": d(), b"n/m/x": f()}
    assert actions(diff(before, after)) == [
        ("a/new", "put"), ("n", "put"), ("n/m", "put"), ("n/m/x", "put")]


@pytest.mark.parametrize("change", [
    {"digest": "h-other"}, {"mode": 0o755}, {"uid": 1000}, {"gid": 5}, {"mtime_ns": 2_000},
    {"size": 9}, {"xattrs": (("user.k", b"v"),)},
])
def test_a_file_whose_content_or_metadata_changed_is_put(change: dict[str, object]) -> None:
    before = tree(a=f())
    after = {**before, b"a": replace(before[b"a"], **change)}  # type: ignore[arg-type]
    assert actions(diff(before, after)) == [("a", "put")]


def test_a_file_touched_without_a_visible_change_is_put_as_overlay_copies_it_up() -> None:
    before = tree(a=f(), b=f())
    after = {**before, b"a": replace(before[b"a"], ctime_ns=99),  # chmod to the same mode
             b"b": replace(before[b"b"], ino=999_999)}  # removed and written again, same bytes
    assert actions(diff(before, after)) == [("a", "put"), ("b", "put")]


def test_a_file_whose_other_name_was_removed_is_not_touched() -> None:
    shared = f(nlink=2)
    before = tree(a=shared, b=shared)
    after = tree(a=replace(shared, ctime_ns=99, nlink=1))
    assert actions(diff(before, after)) == [("b", "whiteout")]


def test_a_new_hard_link_touches_its_first_name_too() -> None:
    before = tree(a=f())
    linked = replace(before[b"a"], ctime_ns=99, nlink=2)
    after = {**before, b"a": linked, b"b": linked}
    assert actions(diff(before, after)) == [("a", "put"), ("b", "put")]


def test_a_symlink_retargeted_and_a_device_renumbered_are_put() -> None:
    dev = Entry(stat.S_IFCHR, 0o600, 0, 0, 1, rdev=os.makedev(1, 3), ino=next(INO))
    before = tree(l=link(b"x"), c=dev)
    after = {**before, b"l": replace(before[b"l"], target=b"y"),
             b"c": replace(dev, rdev=os.makedev(1, 5))}
    assert actions(diff(before, after)) == [("c", "put"), ("l", "put")]


def test_a_dir_is_put_only_when_its_own_attributes_changed() -> None:
    before = tree(a=d(), a__f=f(), b=d(), b__f=f())
    after = {**before, b"a/f": replace(before[b"a/f"], digest="h-new"),  # a: only copied up
             b"b": replace(before[b"b"], mtime_ns=5_000), b"b/g": f()}
    assert actions(diff(before, after)) == [("a/f", "put"), ("b", "put"), ("b/g", "put")]


def test_removed_paths_are_whited_out_once_at_the_top_of_the_removed_subtree() -> None:
    before = tree(a=d(), a__b=d(), a__b__c=f(), a__keep=f(), gone=f())
    after = tree(a=before[b"a"], a__keep=before[b"a/keep"])
    assert actions(diff(before, after)) == [("a/b", "whiteout"), ("gone", "whiteout")]


def test_a_dir_replaced_by_a_new_dir_is_opaque_with_everything_below_it_put() -> None:
    before = tree(a=d(), a__old=f(), a__same=f("s"), a__sub=d(), a__sub__x=f())
    after = tree(a=d(), a__same=replace(before[b"a/same"], ino=next(INO)), a__sub=d())
    assert actions(diff(before, after)) == [("a", "opaque"), ("a/same", "put"),
                                            ("a/sub", "put")]


def test_without_opaque_a_replaced_dir_is_compared_entry_by_entry() -> None:
    before = tree(a=d(), a__old=f(), a__same=f("s"))
    after = tree(a=replace(before[b"a"], ino=next(INO)), a__same=before[b"a/same"])
    assert actions(diff(before, after, opaque=False)) == [("a/old", "whiteout")]


def test_a_dir_replaced_by_a_file_and_a_file_by_a_dir() -> None:
    before = tree(a=d(), a__x=f(), b=f())
    after = tree(a=f("now a file"), b=d(), b__y=f())
    assert actions(diff(before, after)) == [("a", "put"), ("b", "put"), ("b/y", "put")]


def test_a_file_replaced_by_a_symlink_is_put() -> None:
    before = tree(a=f())
    after = tree(a=link(b"/etc"))
    assert actions(diff(before, after)) == [("a", "put")]


def test_changes_come_parents_first_in_path_component_order() -> None:
    before = tree(a=d())
    after = {**before, b"a-b": f(), b"a/b": f(), b"a/a": f()}
    # byte order would put "a-b" between "a" and "a/b"; component order keeps a's children
    # right after it, as a walk of the tree (and capture's) meets them
    assert [c.path for c in diff(before, after)] == [b"a/a", b"a/b", b"a-b"]


def test_the_root_is_never_a_change() -> None:
    before = tree()
    after = {ROOT: replace(before[ROOT], mode=0o700, ino=42)}
    assert diff(before, after) == []


def test_needed_dirs_are_every_parent_of_a_change() -> None:
    changes = [Change(b"a/b/c", Action.PUT), Change(b"a/x", Action.WHITEOUT),
               Change(b"top", Action.PUT)]
    assert needed_dirs(changes) == [b"a", b"a/b"]


def test_a_deep_change_in_a_made_up_tree_of_10000_levels() -> None:
    path = b"/".join([b"d"] * 10_000)
    before = tree()
    for depth in range(1, 10_001):
        before[b"/".join([b"d"] * depth)] = Entry(stat.S_IFDIR, 0o755, 0, 0, 1, ino=depth)
    after = {**before, path + b"/f": f()}
    assert actions(diff(before, after)) == [((path + b"/f").decode(), "put")]


# =============================================================================================
# snapshot of real trees


def test_snapshot_records_every_kind_and_attribute(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "file").write_bytes(b"hello")
    (root / "dir" / "file").chmod(0o4755)
    os.setxattr(root / "dir" / "file", "user.note", b"kept")
    (root / "hard").hardlink_to(root / "dir" / "file")
    (root / "sym").symlink_to("dir/file")
    os.mkfifo(root / "fifo")
    tree_ = snapshot(root)
    assert set(tree_) == {ROOT, b"dir", b"dir/file", b"hard", b"sym", b"fifo"}
    file = tree_[b"dir/file"]
    assert (file.fmt, file.mode, file.size, file.nlink) == (stat.S_IFREG, 0o4755, 5, 2)
    assert file.xattrs == (("user.note", b"kept"),)
    assert tree_[b"hard"].ino == file.ino and tree_[b"hard"].digest == file.digest
    assert tree_[b"sym"].target == b"dir/file" and tree_[b"sym"].digest is None
    assert tree_[b"fifo"].fmt == stat.S_IFIFO
    assert tree_[b"dir"].is_dir


def test_snapshot_leaves_out_masked_paths_and_all_below_them(tmp_path: Path) -> None:
    (tmp_path / "dev" / "pipes").mkdir(parents=True)
    (tmp_path / "dev" / "null").write_text("")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hosts").write_text("x")
    (tmp_path / "etc" / "passwd").write_text("x")
    tree_ = snapshot(tmp_path, frozenset({b"dev", b"etc/hosts"}))
    assert set(tree_) == {ROOT, b"etc", b"etc/passwd"}


def test_snapshot_drops_overlay_xattrs_as_a_layer_does(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    os.setxattr(tmp_path / "d", "user.overlay.opaque", b"y")
    os.setxattr(tmp_path / "d", "user.mine", b"1")
    assert snapshot(tmp_path)[b"d"].xattrs == (("user.mine", b"1"),)


def test_snapshot_then_diff_of_real_edits(tmp_path: Path) -> None:
    (tmp_path / "keep").write_text("k")
    (tmp_path / "edit").write_text("old")
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "x").write_text("x")
    (tmp_path / "swap").mkdir()
    (tmp_path / "swap" / "old").write_text("o")
    before = snapshot(tmp_path)
    (tmp_path / "edit").write_text("new")
    (tmp_path / "gone" / "x").unlink()
    (tmp_path / "gone").rmdir()
    (tmp_path / "swap" / "old").unlink()
    (tmp_path / "swap").rename(tmp_path / "swap-was")  # keeps its inode alive: another one
    (tmp_path / "swap").mkdir()
    (tmp_path / "swap" / "new").write_text("n")
    (tmp_path / "swap-was").rmdir()
    assert actions(diff(before, snapshot(tmp_path))) == [
        ("edit", "put"), ("gone", "whiteout"), ("swap", "opaque"), ("swap/new", "put")]


def test_snapshot_of_a_tree_of_10000_levels(tmp_path: Path) -> None:
    with fast_tmp_dir(tmp_path) as top:
        nest(top)  # 20,000 bytes of path: far past PATH_MAX (4,096)
        tree_ = snapshot(top)
    deep = b"/".join([b"d"] * LEVELS) + b"/f"
    assert tree_[deep].size == len(b"bottom\n") and len(tree_) == LEVELS + 2
