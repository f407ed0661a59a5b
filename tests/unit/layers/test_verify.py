"""layers/verify.py: a layer dir compared with its layer tar (issue 11 item 14, `check --deep`).

Real files on tmp_path as root: whiteouts are 0/0 char devices and opacity is a trusted.*
xattr, which pyfakefs cannot hold.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from stepbuild.fs.trees import remove_tree
from stepbuild.layers.apply import apply_layer
from stepbuild.layers.capture import capture
from stepbuild.layers.tar import CHRTYPE, DIRTYPE, LNKTYPE, SYMTYPE
from stepbuild.layers.verify import verify_layer_dir
from tests.badtars import OPAQUE, ent, reg, tar

MTIME = 1_700_000_000_000_000_000

LAYER = tar(
    ent(DIRTYPE, "etc/", mtime_ns=MTIME),
    reg("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", mtime_ns=MTIME),
    reg("etc/.wh.shadow"),
    ent(DIRTYPE, "var/cache/", mtime_ns=MTIME),
    reg("var/cache/.wh..wh..opq"),
    reg("var/cache/fresh", b"fresh", mtime_ns=MTIME),
    reg("usr/bin/tool", b"#!/bin/sh\n", mode=0o4755, mtime_ns=MTIME),
    ent(LNKTYPE, "usr/bin/tool2", link="usr/bin/tool", mtime_ns=MTIME),
    ent(SYMTYPE, "bin", link="usr/bin", mode=0o777, mtime_ns=MTIME),
    reg(".wh.old"),
    ent(DIRTYPE, "srv/", mtime_ns=MTIME),
    reg(".wh.srv"),  # a whiteout of a dir the layer has: the dir becomes opaque
)


def applied(tmp_path: Path, data: bytes = LAYER) -> Path:
    target = tmp_path / "layer"
    target.mkdir()
    apply_layer(io.BytesIO(data), target)
    return target


def verify(diff: Path, data: bytes = LAYER) -> list[str]:
    return verify_layer_dir(str(diff), io.BytesIO(data))


def test_an_applied_layer_agrees_with_its_tar(tmp_path: Path) -> None:
    diff = applied(tmp_path)
    assert verify(diff) == []


def test_a_built_layer_dir_agrees_with_the_tar_captured_from_it(tmp_path: Path) -> None:
    """A step's upper dir holds what capture leaves out: a copied-up dir, a whiteout with
    nothing below it inside an opaque dir, a socket."""
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc" / "gone").write_text("bye")
    (lower / "opt" / "x").mkdir(parents=True)
    (lower / "opt" / "x" / "old").write_text("old")
    upper.mkdir()
    (upper / "etc").mkdir()
    shutil.copystat(lower / "etc", upper / "etc")  # copied up, unchanged: not in the tar
    os.mknod(upper / "etc" / "gone", stat.S_IFCHR, os.makedev(0, 0))
    (upper / "opt").mkdir()
    shutil.copystat(lower / "opt", upper / "opt")
    (upper / "opt" / "x").mkdir()
    os.setxattr(upper / "opt" / "x", OPAQUE, b"y")
    os.mknod(upper / "opt" / "x" / "tmpfile", stat.S_IFCHR, os.makedev(0, 0))
    (upper / "app").mkdir()
    (upper / "app" / "a").write_text("a")
    os.link(upper / "app" / "a", upper / "app" / "b")
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(upper / "app" / "sock"))
    blob = capture(upper, [lower], tmp_path / "layer.tar")
    assert blob is not None
    data = blob.path.read_bytes()
    assert verify(upper, data) == []
    assert verify(applied(tmp_path, data), data) == []


@pytest.mark.parametrize(("tamper", "expected"), [
    (lambda d: (d / "etc" / "passwd").write_bytes(b"root::0:0::/:/bin/sh\n"),
     "etc/passwd: content differs"),
    (lambda d: (d / "etc" / "passwd").chmod(0o666), "etc/passwd: mode 0666, the blob has 0644"),
    (lambda d: os.chown(d / "etc" / "passwd", 1000, 1000),
     "etc/passwd: owner 1000:1000, the blob has 0:0"),
    (lambda d: (d / "etc" / "evil").write_text("x"), "etc/evil: not in the layer's blob"),
    (lambda d: (d / "var" / "cache" / "fresh").unlink(), "var/cache/fresh: missing"),
    (lambda d: (d / "etc" / "shadow").unlink(), "etc/shadow: missing"),
    (lambda d: os.removexattr(d / "var" / "cache", OPAQUE),
     "var/cache: not opaque, the blob makes it opaque"),
    (lambda d: os.setxattr(d / "usr", OPAQUE, b"y"), "usr: opaque"),
    (lambda d: os.setxattr(d / "etc" / "passwd", "user.note", b"x"), "etc/passwd: xattrs differ"),
    (lambda d: ((d / "bin").unlink(), (d / "bin").symlink_to("/host")),
     "bin: link target differs"),
    (lambda d: os.utime(d / "etc" / "passwd", (0, 0)), "etc/passwd: mtime differs"),
    (lambda d: ((d / "etc" / "passwd").unlink(), (d / "etc" / "passwd").mkdir()),
     "etc/passwd: is a dir, the blob has a file"),
    (lambda d: os.mknod(d / "usr" / "sda", stat.S_IFBLK | 0o600, os.makedev(8, 0)),
     "usr/sda: not in the layer's blob"),
    (lambda d: os.mknod(d / "usr" / "gone", stat.S_IFCHR, os.makedev(0, 0)),
     "usr/gone: not in the layer's blob"),  # a whiteout the blob lacks hides a lower file
])
def test_each_kind_of_tampering_is_reported(tmp_path: Path, tamper: Callable[[Path], object],
                                            expected: str) -> None:
    diff = applied(tmp_path)
    tamper(diff)
    problems = verify(diff)
    assert expected in problems
    # besides: the mtimes that writing changed, of the entry and of its dir
    path = expected.partition(": ")[0]
    assert set(problems) - {expected} <= {f"{path}: mtime differs",
                                          f"{path.rpartition('/')[0]}: mtime differs"}


def test_a_broken_hard_link_is_reported(tmp_path: Path) -> None:
    diff = applied(tmp_path)
    tool2 = diff / "usr" / "bin" / "tool2"
    tool2.unlink()
    shutil.copy2(diff / "usr" / "bin" / "tool", tool2)  # same bytes, mode, times: a copy
    os.chmod(tool2, 0o4755)
    assert verify(diff) == ["usr/bin/tool, usr/bin/tool2: hard links differ from the blob"]


def test_a_device_number_is_compared(tmp_path: Path) -> None:
    data = tar(ent(CHRTYPE, "dev/null", mode=0o666, devmajor=1, devminor=3, mtime_ns=MTIME))
    diff = applied(tmp_path, data)
    assert verify(diff, data) == []
    (diff / "dev" / "null").unlink()
    os.mknod(diff / "dev" / "null", stat.S_IFCHR, os.makedev(1, 5))
    os.chmod(diff / "dev" / "null", 0o666)
    os.utime(diff / "dev" / "null", ns=(MTIME, MTIME))
    assert verify(diff, data) == ["dev/null: device number differs"]


def test_duplicate_entries_the_last_wins_and_a_dir_after_its_whiteout_is_opaque(
        tmp_path: Path) -> None:
    data = tar(reg("a", b"first"), reg("a", b"second"), reg(".wh.d"), ent(DIRTYPE, "d/"),
               reg("d/f", b"f"), reg("x", b"file"), ent(DIRTYPE, "x/"))
    diff = applied(tmp_path, data)
    assert verify(diff, data) == []
    mtime = (diff / "a").stat().st_mtime_ns
    (diff / "a").write_bytes(b"first")
    os.utime(diff / "a", ns=(mtime, mtime))
    assert verify(diff, data) == ["a: content differs"]


def test_the_report_is_capped(tmp_path: Path) -> None:
    diff = applied(tmp_path)
    for i in range(30):
        (diff / f"extra{i:02}").write_text("x")
    problems = verify_layer_dir(str(diff), io.BytesIO(LAYER), limit=5)
    assert problems[:5] == [f"extra{i:02}: not in the layer's blob" for i in range(5)]
    assert problems[5:] == ["... and 25 more differences"]


def test_a_deep_tree_is_walked_without_recursion(tmp_path: Path) -> None:
    """1,100 levels: more than Python's recursion limit would allow a recursive walk, and a
    path longer than PATH_MAX (the walk goes by name, one level at a time)."""
    names = "/".join(["d" * 8] * 1100)
    diff = tmp_path / "layer"
    diff.mkdir()
    fd = os.open(diff, os.O_RDONLY)
    for _ in range(1100):
        os.mkdir("d" * 8, dir_fd=fd)
        fd2 = os.open("d" * 8, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = fd2
    with open(os.open("evil", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as f:
        f.write(b"x")
    os.close(fd)
    try:
        assert verify(diff, tar(reg("top", b""))) == [f"{names}/evil: not in the layer's blob",
                                                      "top: missing"]
    finally:
        remove_tree(diff)


def test_names_through_the_layers_own_symlinks_are_resolved_as_apply_does(
        tmp_path: Path) -> None:
    """`s -> /` then `s/landed` lands at /landed; `d -> ../../x` stays inside the layer."""
    data = tar(ent(SYMTYPE, "s", link="/"), reg("s/landed", b"1"),
               ent(DIRTYPE, "x/"), ent(SYMTYPE, "x/up", link="../../x"), reg("x/up/f", b"2"),
               ent(LNKTYPE, "x/hard", link="s/landed"))  # (a whiteout there: apply refuses it)
    diff = applied(tmp_path, data)
    assert (diff / "landed").read_bytes() == b"1" and (diff / "x" / "f").read_bytes() == b"2"
    assert verify(diff, data) == []


def test_an_empty_file_is_an_empty_layer(tmp_path: Path) -> None:
    """As apply reads it (Go's archive/tar too): test_import's empty layer file."""
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    diff = tmp_path / "layer"
    diff.mkdir()
    assert verify_layer_dir(str(diff), empty) == []
    (diff / "extra").write_text("x")
    assert verify_layer_dir(str(diff), empty) == ["extra: not in the layer's blob"]
