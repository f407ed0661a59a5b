"""Chroot isolation's layers are overlay's: the same change, made once through a real overlay
mount and once in a plain copy of the layers (`layers/merged.py`) recorded by a tree diff
(`layers/treediff.py` → `layers/upperdir.py`), captures to the same layer bytes (issue 13;
docs/security.md family F).

Each case is a change (Python file operations on the image root) applied to a two-layer
stack whose top layer has overlay's own whiteout and opaque dir. Times are clamped with
SOURCE_DATE_EPOCH as a reproducible build clamps them, so only what the change did differs
between runs; the lower dirs are older than the epoch.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from stepbuild.layers.capture import capture, clamp_mtimes
from stepbuild.layers.merged import copy_merged
from stepbuild.layers.treediff import Pins, diff, snapshot
from stepbuild.layers.upperdir import opaque_supported, write_upper
from stepbuild.sandbox import host

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("private_mount_ns")]

EPOCH = 1_700_000_000
OLD = 1_600_000_000  # the lower dirs' times: before the epoch, so they survive the clamp


def _age(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames]:
            os.utime(os.path.join(dirpath, name), (OLD, OLD), follow_symlinks=False)
    os.utime(root, (OLD, OLD))


@pytest.fixture
def lowers(tmp_path: Path) -> list[Path]:
    """Two layer dirs, top first: the base, and a layer over it with a whiteout (of
    base/etc/motd), an opaque dir (var/cache, hiding the base's) and a changed file."""
    base, top = tmp_path / "base", tmp_path / "top"
    for d in ("etc", "var/cache/old", "usr/bin", "usr/share/doc", "srv/data", "home/app"):
        (base / d).mkdir(parents=True)
    (base / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (base / "etc" / "motd").write_text("hello\n")
    (base / "var" / "cache" / "old" / "blob").write_text("cached")
    (base / "usr" / "bin" / "tool").write_text("#!/bin/sh\n")
    (base / "usr" / "bin" / "tool").chmod(0o755)
    (base / "usr" / "bin" / "tool-alias").hardlink_to(base / "usr" / "bin" / "tool")
    (base / "usr" / "share" / "doc" / "README").write_text("docs")
    (base / "srv" / "data" / "a.txt").write_text("a")
    (base / "srv" / "link").symlink_to("data/a.txt")
    (base / "home" / "app" / "owned").write_text("mine")
    os.chown(base / "home" / "app", 1000, 1000)
    os.chown(base / "home" / "app" / "owned", 1000, 1000)
    os.setxattr(base / "srv" / "data" / "a.txt", "user.origin", b"base")
    (top / "etc").mkdir(parents=True)
    os.mknod(top / "etc" / "motd", stat.S_IFCHR, os.makedev(0, 0))
    (top / "var" / "cache").mkdir(parents=True)
    os.setxattr(top / "var" / "cache", "trusted.overlay.opaque", b"y")
    (top / "var" / "cache" / "new").write_text("fresh")
    (top / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/\n")
    _age(base)
    _age(top)
    return [top, base]


def _rm_rf_and_remake(root: Path) -> None:
    shutil.rmtree(root / "usr" / "share")
    (root / "usr" / "share").mkdir()
    (root / "usr" / "share" / "doc").mkdir()
    (root / "usr" / "share" / "doc" / "NEW").write_text("new docs")


def _deep(root: Path) -> None:
    path = root / "srv"
    for _ in range(150):
        path = path / "d"
    path.mkdir(parents=True)
    (path / "leaf").write_text("deep")


def _file_to_dir(root: Path) -> None:
    (root / "srv" / "data" / "a.txt").unlink()
    (root / "srv" / "data" / "a.txt").mkdir()
    (root / "srv" / "data" / "a.txt" / "inside").write_text("i")


def _dir_to_file(root: Path) -> None:
    shutil.rmtree(root / "srv" / "data")
    (root / "srv" / "data").write_text("flat now")


def _new_hardlinks(root: Path) -> None:
    (root / "srv" / "one").write_text("shared")
    (root / "srv" / "two").hardlink_to(root / "srv" / "one")


CHANGES: dict[str, Callable[[Path], None]] = {
    "new file in an existing dir": lambda r: (r / "etc" / "hostname").write_text("box\n"),
    "edit a file of the lower layer": lambda r: (r / "usr" / "share" / "doc" / "README"
                                                 ).write_text("edited"),
    "edit a file of the top layer": lambda r: (r / "etc" / "passwd").write_text("root\n"),
    "chmod to the same mode": lambda r: os.chmod(r / "srv" / "data" / "a.txt", 0o644),
    "chown to the same owner": lambda r: os.chown(r / "home" / "app" / "owned", 1000, 1000),
    "chown a dir": lambda r: os.chown(r / "srv", 1000, 1000),
    "remove a file": lambda r: (r / "srv" / "data" / "a.txt").unlink(),
    "remove a dir tree": lambda r: shutil.rmtree(r / "usr" / "share"),
    "remove what the top layer added": lambda r: (r / "var" / "cache" / "new").unlink(),
    "rm -rf a dir and make it again": _rm_rf_and_remake,
    "a dir replaced by a file": _dir_to_file,
    "a file replaced by a dir": _file_to_dir,
    "a symlink retargeted": lambda r: ((r / "srv" / "link").unlink(),
                                       (r / "srv" / "link").symlink_to("/etc/passwd")),
    "a new hard link to a lower file": lambda r: (r / "etc" / "passwd2").hardlink_to(
        r / "etc" / "passwd"),
    "a new pair of hard links": _new_hardlinks,
    "an xattr set": lambda r: os.setxattr(r / "etc" / "passwd", "user.tag", b"1"),
    "a rename": lambda r: (r / "srv" / "data" / "a.txt").rename(r / "srv" / "b.txt"),
    "a setuid file": lambda r: ((r / "usr" / "bin" / "su").write_text("x"),
                                os.chmod(r / "usr" / "bin" / "su", 0o4755)),
    "a fifo": lambda r: os.mkfifo(r / "srv" / "pipe"),
    "a deep new tree": _deep,
    "nothing at all": lambda r: (r / "etc" / "passwd").read_text(),
}


def _through_overlay(lowers: list[Path], work: Path, change: Callable[[Path], None]) -> bytes:
    work.mkdir()
    with host.mounted(work, lowers) as merged:
        change(merged)
    return _captured(work / "upper", lowers, work / "layer.tar")


def _through_a_copy(lowers: list[Path], work: Path, change: Callable[[Path], None]) -> bytes:
    root = work / "root"
    root.mkdir(parents=True)
    copy_merged(lowers, root)
    with Pins(10_000) as pins:
        before = snapshot(root, pins=pins)
        change(root)
        after = snapshot(root)
    probe = work / "probe"
    probe.mkdir()
    write_upper(diff(before, after, opaque=opaque_supported(probe)), root, after,
                work / "upper")
    return _captured(work / "upper", lowers, work / "layer.tar")


def _captured(upper: Path, lowers: list[Path], tar: Path) -> bytes:
    clamp_mtimes(upper, EPOCH)  # as Executor.capture does with SOURCE_DATE_EPOCH
    blob = capture(upper, lowers, tar, source_date_epoch=EPOCH)
    return b"" if blob is None else tar.read_bytes()


@pytest.mark.parametrize("name", list(CHANGES))
def test_the_same_change_gives_the_same_layer_bytes_as_overlay(
        name: str, lowers: list[Path], tmp_path: Path) -> None:
    change = CHANGES[name]
    by_overlay = _through_overlay(lowers, tmp_path / "overlay", change)
    by_copy = _through_a_copy(lowers, tmp_path / "copy", change)
    assert by_copy == by_overlay
    assert (by_copy == b"") == (name == "nothing at all")


def test_a_new_link_to_a_file_with_several_names_records_them_all(
        lowers: list[Path], tmp_path: Path) -> None:
    """The documented difference (layers/treediff.py): the copy keeps the lower file's two
    names one inode, so linking one touches both, where overlay copies up the one linked
    from. The layer then holds the other name too: the same tree, one more entry."""
    def change(r: Path) -> None:
        (r / "usr" / "bin" / "tool2").hardlink_to(r / "usr" / "bin" / "tool")

    by_overlay = _names(_through_overlay(lowers, tmp_path / "overlay", change))
    by_copy = _names(_through_a_copy(lowers, tmp_path / "copy", change))
    assert by_overlay == ["usr/bin/", "usr/bin/tool", "usr/bin/tool2"]
    assert by_copy == ["usr/bin/", "usr/bin/tool", "usr/bin/tool-alias", "usr/bin/tool2"]


def _names(tar: bytes) -> list[str]:
    names, offset = [], 0
    while tar[offset:offset + 1] not in (b"", b"\0"):
        header = tar[offset:offset + 512]
        size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
        name = header[:100].rstrip(b"\0").decode()
        if header[156:157] != b"x":  # a PAX header is not an entry
            names.append(name)
        offset += 512 + (size + 511) // 512 * 512
    return names


def _view(root: Path) -> dict[bytes, tuple[object, ...]]:
    """What a step can see of each entry (not inode numbers, ctimes, directories' link
    counts: overlay counts those its own way; nor the root, which is the upper dir's)."""
    return {path: (e.fmt, e.mode, e.uid, e.gid, e.mtime_ns, e.size, e.rdev, e.target,
                   e.xattrs, e.digest, None if e.is_dir else e.nlink)
            for path, e in snapshot(root).items() if path}


def test_the_copy_is_what_the_overlay_shows(lowers: list[Path], tmp_path: Path) -> None:
    copied = tmp_path / "copied"
    copied.mkdir()
    copy_merged(lowers, copied)
    (tmp_path / "ov").mkdir()
    with host.mounted(tmp_path / "ov", lowers) as merged:
        shown = _view(merged)
    assert _view(copied) == shown
    assert b"etc/motd" not in shown and b"var/cache/old" not in shown  # whiteout, opaque
    assert shown[b"usr/bin/tool-alias"][-1] == 2  # one inode, two names, in both


def test_the_upper_dir_made_from_a_diff_works_as_an_overlay_layer_dir(
        lowers: list[Path], tmp_path: Path) -> None:
    """The upper dir becomes the layer dir later steps mount: whiteouts and the opaque dir
    must hide what they hide there too."""
    work = tmp_path / "copy"
    _through_a_copy(lowers, work, lambda r: (_rm_rf_and_remake(r),
                                             (r / "etc" / "passwd").unlink()))
    (tmp_path / "next").mkdir()
    with host.mounted(tmp_path / "next", [work / "upper", *lowers]) as merged:
        assert not (merged / "etc" / "passwd").exists()
        assert sorted(os.listdir(merged / "usr" / "share" / "doc")) == ["NEW"]
        assert (merged / "usr" / "bin" / "tool").exists()


def test_hollow_dirs_are_copied_empty(lowers: list[Path], tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    copy_merged(lowers, target, hollow=frozenset({b"srv"}))
    assert (target / "srv").is_dir() and os.listdir(target / "srv") == []
    assert (target / "etc" / "passwd").exists()
