"""Every walk of a layer handles a tree 10,000 directories deep (issue 11 item 11).

Before, capture, clamp_mtimes, apply, unpack, flatten and the removal of a replaced directory
recursed once per level (RecursionError near 1,000) or built host paths from the whole name
(ENAMETOOLONG past PATH_MAX, 4,096 bytes: 10,000 levels of `d/` are 20,000). The trees are
built on tmpfs where there is one (tests/deeptrees.py) so the suite stays fast.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stepbuild.fs.trees import remove_tree
from stepbuild.layers.apply import apply_layer
from stepbuild.layers.capture import capture, clamp_mtimes
from stepbuild.layers.flatten import flatten
from stepbuild.layers.tar import (
    DIRTYPE,
    END_OF_ARCHIVE,
    REGTYPE,
    Header,
    TarReader,
    encode_header,
    padding,
)
from stepbuild.layers.unpack import unpack_archive
from tests.deeptrees import LEVELS, chain_depth, fast_tmp_dir, nest

pytestmark = pytest.mark.root  # trusted.* xattrs, chown

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
DEEP = "d/" * LEVELS  # the bottom dir's name in a layer


@pytest.fixture()
def here(tmp_path: Path) -> Iterator[Path]:
    with fast_tmp_dir(tmp_path) as path:
        yield path


def _each_level(top: Path, action: Callable[[int], None]) -> None:
    """`action(fd)` on `top` and on every `d` below it, fd by fd."""
    fd = os.open(top, _DIR)
    try:
        while True:
            action(fd)
            try:
                down = os.open("d", _DIR, dir_fd=fd)
            except FileNotFoundError:
                return
            os.close(fd)
            fd = down
    finally:
        os.close(fd)


def _file_entry(name: bytes, data: bytes) -> bytes:
    header = Header(name=name, type=REGTYPE, mode=0o644, size=len(data))
    return encode_header(header) + data + padding(len(data))


def _bottom(top: Path, levels: int = LEVELS) -> int:
    """An fd of the bottom dir of `top`'s chain (the caller closes it)."""
    fd = os.open(top, _DIR)
    for _ in range(levels):
        down = os.open("d", _DIR, dir_fd=fd)
        os.close(fd)
        fd = down
    return fd


def _entries(tar: Path) -> list[tuple[bytes, bytes]]:
    with open(tar, "rb") as f:
        return [(h.name, h.type) for h in TarReader(f)]


@pytest.fixture(scope="module")
def deep_layer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A layer tar (path, diff_id) capture made of 10,000 nested dirs and the file at the
    bottom: made once, it is 110 MB of names."""
    with fast_tmp_dir(tmp_path_factory.mktemp("deep")) as here:
        upper = here / "made"
        upper.mkdir()
        nest(upper)
        blob = capture(upper, [], here / "deep.tar")
        assert blob is not None
        remove_tree(upper)
        yield blob.path, blob.diff_id


def test_capture_lists_every_level_in_tree_order(deep_layer: tuple[Path, str]) -> None:
    entries = _entries(deep_layer[0])
    assert len(entries) == LEVELS + 1
    assert entries[0] == (b"d/", DIRTYPE)
    assert entries[LEVELS - 1] == (DEEP.encode(), DIRTYPE)
    assert entries[LEVELS] == (DEEP.encode() + b"f", REGTYPE)


def test_capture_looks_through_deep_lowers(here: Path) -> None:
    """Copied-up dirs 10,000 levels down are left out, a whiteout there is kept: the
    lower dirs are followed to the bottom."""
    lower, upper = here / "lower", here / "upper"
    lower.mkdir()
    upper.mkdir()
    nest(lower)
    nest(upper, leaf=None)
    bottom = _bottom(upper)
    try:
        os.mknod("f", stat.S_IFCHR, os.makedev(0, 0), dir_fd=bottom)  # overlay's whiteout
        os.mkdir("new", dir_fd=bottom)
    finally:
        os.close(bottom)
    for top in (lower, upper):  # as copy-up leaves them: the lower dir's mtime
        _each_level(top, lambda fd: os.utime(fd, ns=(0, 0)))
    blob = capture(upper, [lower], here / "l.tar")
    assert blob is not None
    assert _entries(blob.path) == [(DEEP.encode() + b".wh.f", REGTYPE),
                                   (DEEP.encode() + b"new/", DIRTYPE)]


def test_clamp_mtimes_reaches_the_bottom(here: Path) -> None:
    nest(here)
    bottom = _bottom(here)
    try:
        os.utime("f", (4_000_000_000, 4_000_000_000), dir_fd=bottom)
    finally:
        os.close(bottom)
    clamp_mtimes(here, 1_000)
    bottom = _bottom(here)
    try:
        assert os.stat("f", dir_fd=bottom).st_mtime == 1_000
        assert os.fstat(bottom).st_mtime <= 1_000
    finally:
        os.close(bottom)


def test_apply_and_inherit_at_any_depth(here: Path, deep_layer: tuple[Path, str]) -> None:
    """A layer 10,000 levels deep applies on a lower just as deep; a dir the tar does not
    list takes the attributes of the lower dir it covers, at the bottom too."""
    tar = deep_layer[0]
    lower = here / "lower"
    lower.mkdir()
    nest(lower, leaf=None)
    _each_level(lower, lambda fd: os.fchmod(fd, 0o711))
    only_file = here / "file.tar"  # the bottom file alone: every dir above it is implicit
    only_file.write_bytes(_file_entry(DEEP.encode() + b"f", b"bottom\n") + END_OF_ARCHIVE)
    for source, mode in ((tar, 0o755), (only_file, 0o711)):
        target = here / f"applied-{mode:o}"
        target.mkdir()
        apply_layer(source, target, lowers=[lower])
        assert chain_depth(target) == (LEVELS, b"bottom\n")
        bottom = _bottom(target, LEVELS)
        try:
            assert stat.S_IMODE(os.fstat(bottom).st_mode) == mode
        finally:
            os.close(bottom)


def test_unpack_archive_of_a_deep_tar(here: Path, deep_layer: tuple[Path, str]) -> None:
    tar = deep_layer[0]
    (here / "root").mkdir()
    unpack_archive(tar, here / "root", "/srv")
    assert chain_depth(here / "root" / "srv") == (LEVELS, b"bottom\n")


def test_a_later_entry_replaces_a_deep_dir(here: Path, deep_layer: tuple[Path, str]) -> None:
    """Removing what an entry replaces walks the old tree iteratively (shutil.rmtree
    recursed), and later entries are not resolved through the removed dirs."""
    tar = deep_layer[0]
    body = tar.read_bytes()[: -len(END_OF_ARCHIVE)]  # capture ends it with END_OF_ARCHIVE
    more = _file_entry(b"d", b"now a file\n") + _file_entry(b"e/f", b"after\n")
    replaced = here / "replaced.tar"
    replaced.write_bytes(body + more + END_OF_ARCHIVE)
    (here / "root").mkdir()
    unpack_archive(replaced, here / "root", "/")
    assert (here / "root" / "d").read_bytes() == b"now a file\n"
    assert (here / "root" / "e" / "f").read_bytes() == b"after\n"


class _Blobs:
    def __init__(self, path: Path) -> None:
        self._path = path

    def blob_path(self, digest: str) -> Path:
        return self._path


def test_flatten_a_deep_layer(here: Path, deep_layer: tuple[Path, str]) -> None:
    tar, diff_id = deep_layer
    (here / "root").mkdir()
    flatten(_Blobs(tar), [diff_id], here / "root")
    assert chain_depth(here / "root") == (LEVELS, b"bottom\n")
    bottom = _bottom(here / "root", LEVELS)
    try:  # dir times come from their entries, at every level
        assert os.fstat(bottom).st_mtime_ns % 1_000_000_000 == 0
    finally:
        os.close(bottom)


def test_remove_tree_at_ten_thousand_levels(here: Path) -> None:
    (here / "t").mkdir()
    nest(here / "t")
    remove_tree(here / "t")
    assert not (here / "t").exists()
