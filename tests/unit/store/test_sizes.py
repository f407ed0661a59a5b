"""store/sizes.py: sizes as du counts them (blocks, hard links once, any depth)."""

from __future__ import annotations

import os
from pathlib import Path

from stepbuild.fs.trees import remove_tree
from stepbuild.store.sizes import Size, Sizer


def blocks(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def test_a_file_counts_its_blocks_and_its_length(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 5000)
    assert Sizer().measure(path) == Size(blocks(path), 5000)


def test_a_sparse_file_spends_fewer_blocks_than_its_length(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(10 << 20)
    size = Sizer().measure(path)
    assert size.apparent == 10 << 20 and size.disk < 1 << 20


def test_a_tree_counts_its_dirs_and_hard_links_once(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a").write_bytes(b"a" * 9000)
    os.link(tree / "sub" / "a", tree / "b")
    (tree / "link").symlink_to("sub/a")
    expected = (blocks(tree) + blocks(tree / "sub") + blocks(tree / "sub" / "a")
                + blocks(tree / "link"))
    assert Sizer().measure(tree).disk == expected


def test_one_sizer_counts_a_file_linked_from_two_trees_once(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "one" / "f").write_bytes(b"f" * 8192)
    os.link(tmp_path / "one" / "f", tmp_path / "two" / "f")
    sizer = Sizer()
    first, second = sizer.measure(tmp_path / "one"), sizer.measure(tmp_path / "two")
    assert first.disk == blocks(tmp_path / "one") + blocks(tmp_path / "one" / "f")
    assert second.disk == blocks(tmp_path / "two")


def test_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(1500):  # deeper than Python's recursion limit and PATH_MAX allows
            os.mkdir("d", dir_fd=fd)
            down = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = down
    finally:
        os.close(fd)
    size = Sizer().measure(tmp_path / "d")
    remove_tree(tmp_path / "d")  # pytest's own clean-up recurses once per level
    assert size.disk >= 1500 * 512 and size.apparent > 0


def test_a_missing_path_is_nothing(tmp_path: Path) -> None:
    assert Sizer().measure(tmp_path / "absent") == Size()
