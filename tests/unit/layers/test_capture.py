"""layer: overlay upper dir → deterministic OCI layer tar (and the tar format it writes).

Capture tests build upper/lower trees on tmp_path with real 0/0 char-device whiteouts and
`trusted.overlay.*` xattrs (root needed for those: they skip with the reason otherwise).
Unpacking archives (stepbuild/layers/unpack.py) is tested in tests/unit/layers/test_unpack.py.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from stepbuild.errors import LayerError
from stepbuild.layers.capture import LayerBlob, capture
from stepbuild.layers.tar import (
    BLOCK,
    CHRTYPE,
    DIRTYPE,
    LNKTYPE,
    SYMTYPE,
    TarReader,
)
from tests.tars import CAP_NET_BIND, entry, make_tar, needs_root, reg

# =============================================================================================
# helpers


def whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def opaque(path: Path) -> None:
    os.setxattr(path, "trusted.overlay.opaque", b"y")


def members(tar: Path | bytes) -> list[tarfile.TarInfo]:
    data = tar.read_bytes() if isinstance(tar, Path) else tar
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return tf.getmembers()


def names(tar: Path) -> list[str]:
    return [m.name for m in members(tar)]


def do_capture(upper: Path, lowers: list[Path] | None = None, **kw: int) -> LayerBlob | None:
    return capture(upper, lowers or [], upper.parent / f"{upper.name}.tar", **kw)


# =============================================================================================
# tar format


def test_writer_is_pinned() -> None:
    """The bytes of a fixed stream: a change here changes every diff_id stepbuild produces."""
    stream = make_tar(
        entry(DIRTYPE, "etc/", mtime_ns=1_700_000_000 * 10**9),
        reg("etc/hostname", b"box\n", uid=1000, gid=1000, mtime_ns=1_700_000_000 * 10**9),
        entry(SYMTYPE, "bin/sh", "busybox", mode=0o777),
        entry(LNKTYPE, "etc/hn", "etc/hostname", mode=0o644),
        entry(CHRTYPE, "dev/null", devmajor=1, devminor=3, mode=0o666),
        reg("x" * 150, b"long", xattrs=(("user.b", b"2"), ("security.capability", CAP_NET_BIND))),
        reg("caf\u00e9".encode() + b"\xff", b"", uid=3_000_000),
    )
    assert hashlib.sha256(stream).hexdigest() == (
        "8afc76e23b3e980079438150a3bae2ff43f977b11ecd5b443b0bef648831bab8"
    )


def test_writer_output_reads_back_everywhere(tmp_path: Path) -> None:
    long_name = "d/" + "n" * 120 + "/\u00e9t\u00e9"
    stream = make_tar(
        entry(DIRTYPE, "d/"),
        reg(long_name, b"hello", uid=3_000_000, gid=7, mtime_ns=-5 * 10**9),
        reg(b"raw\xffname", b""),
        entry(SYMTYPE, "s", "t" * 200),
        reg("x", b"", xattrs=(("user.k", b"v\n=1"), ("user.empty", b""))),
        entry(CHRTYPE, "null", devmajor=1, devminor=3),
    )
    got = members(stream)
    assert [m.name for m in got] == ["d", long_name, "raw\udcffname", "s", "x", "null"]
    assert (got[1].uid, got[1].gid, got[1].mtime, got[1].size) == (3_000_000, 7, -5, 5)
    assert got[3].linkname == "t" * 200
    assert got[4].pax_headers["SCHILY.xattr.user.k"] == "v\n=1"
    assert (got[5].devmajor, got[5].devminor) == (1, 3)
    for m in got:
        assert (m.uname, m.gname) == ("", "")
    (tmp_path / "a.tar").write_bytes(stream)
    listing = subprocess.run(
        ["tar", "-tvf", str(tmp_path / "a.tar")], capture_output=True, text=True, check=True
    )
    assert long_name in listing.stdout and "warning" not in listing.stderr.lower()
    # our reader agrees with itself
    reread = list(TarReader(io.BytesIO(stream)))
    assert reread[1].name == long_name.encode() and reread[1].uid == 3_000_000
    assert reread[4].xattrs == (("user.empty", b""), ("user.k", b"v\n=1"))


def tarfile_archive(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, kind, link in [
            ("top/", tarfile.DIRTYPE, ""),
            ("top/" + "p" * 90 + "/" + "q" * 90, tarfile.REGTYPE, ""),
            ("top/" + "l" * 160, tarfile.REGTYPE, ""),
            ("top/link", tarfile.SYMTYPE, "x" * 150),
            ("top/hard", tarfile.LNKTYPE, "top/" + "l" * 160),
        ]:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.uid, info.gid, info.mode, info.mtime = 12, 34, 0o640, 1234567890
            data = b"data" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_reader_agrees_with_tarfile(fmt: int) -> None:
    if fmt == tarfile.USTAR_FORMAT:
        with pytest.raises(ValueError):  # ustar cannot hold the long names; check the others
            tarfile_archive(fmt)
        return
    data = tarfile_archive(fmt)
    ours = list(TarReader(io.BytesIO(data)))
    theirs = members(data)
    assert len(ours) == len(theirs)
    for h, m in zip(ours, theirs, strict=True):
        assert (h.name.decode().rstrip("/"), h.linkname.decode(), h.uid, h.gid, h.mode) == (
            m.name,
            m.linkname,
            m.uid,
            m.gid,
            m.mode,
        )
        assert h.mtime_ns == m.mtime * 10**9


# =============================================================================================
# capture


def build_tree(top: Path, order: list[int]) -> None:
    """The same tree whatever the creation order (so inode numbers differ)."""
    steps: list[Callable[[], None]] = [
        lambda: (top / "b.txt").write_bytes(b"bee"),
        lambda: (top / "a" / "deep").mkdir(parents=True, exist_ok=True),
        lambda: (top / "z").symlink_to("a/deep"),
        lambda: os.mkfifo(top / "fifo"),
        lambda: (top / "a").mkdir(exist_ok=True),
        lambda: (top / "a" / "x").write_bytes(b"x" * 5000),
    ]
    top.mkdir()
    for i in order:
        steps[i]()
    os.link(top / "a" / "x", top / "a" / "deep" / "x2")
    os.setxattr(top / "b.txt", "user.note", b"hi")
    for p in [top / "a" / "x", top / "b.txt", top / "fifo", top / "a" / "deep", top / "a"]:
        os.utime(p, ns=(1, 1_650_000_000_123_456_789))
    os.utime(top / "z", ns=(1, 1_650_000_000 * 10**9), follow_symlinks=False)
    for p in [top / "a" / "x", top / "b.txt", top / "a" / "deep", top / "a", top / "fifo"]:
        os.chmod(p, 0o750 if p.is_dir() else 0o640)


def test_same_tree_same_bytes(tmp_path: Path) -> None:
    build_tree(tmp_path / "one", [0, 1, 2, 3, 4, 5])
    build_tree(tmp_path / "two", [4, 5, 3, 1, 0, 2])
    a = do_capture(tmp_path / "one")
    b = do_capture(tmp_path / "two")
    assert a is not None and b is not None
    assert (tmp_path / "one").stat().st_ino != (tmp_path / "two").stat().st_ino
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.diff_id == b.diff_id == "sha256:" + hashlib.sha256(a.path.read_bytes()).hexdigest()
    assert a.size == a.path.stat().st_size
    assert names(a.path) == ["a", "a/deep", "a/deep/x2", "a/x", "b.txt", "fifo", "z"]


def test_source_date_epoch_clamps(tmp_path: Path) -> None:
    up = tmp_path / "up"
    up.mkdir()
    (up / "new").write_text("n")
    (up / "old").write_text("o")
    os.utime(up / "new", (2_000_000_000, 2_000_000_000))
    os.utime(up / "old", (100, 100))
    blob = do_capture(up, source_date_epoch=1000)
    assert blob is not None
    assert {m.name: m.mtime for m in members(blob.path)} == {"new": 1000, "old": 100}
    blob = do_capture(up)
    assert blob is not None
    assert {m.name: m.mtime for m in members(blob.path)} == {"new": 2_000_000_000, "old": 100}


def test_hard_links_stay_links(tmp_path: Path) -> None:
    up = tmp_path / "up"
    (up / "a").mkdir(parents=True)
    (up / "b").mkdir()
    (up / "b" / "first").write_bytes(b"data")
    os.link(up / "b" / "first", up / "a" / "second")
    os.link(up / "b" / "first", up / "c")
    blob = do_capture(up)
    assert blob is not None
    got = {m.name: m for m in members(blob.path)}
    assert got["a/second"].isreg() and got["a/second"].size == 4  # first in tree order
    assert got["b/first"].islnk() and got["b/first"].linkname == "a/second"
    assert got["c"].islnk() and got["c"].linkname == "a/second"


@needs_root
def test_xattrs_kept_overlay_xattrs_dropped(tmp_path: Path) -> None:
    up = tmp_path / "up"
    up.mkdir()
    f = up / "f"
    f.write_bytes(b"x")
    os.setxattr(f, "user.keep", b"1")
    os.setxattr(f, "security.capability", CAP_NET_BIND)
    os.setxattr(f, "trusted.overlay.origin", b"\x00fh")
    os.setxattr(f, "trusted.overlay.overlay.opaque", b"y")  # an escaped xattr: still overlay's
    os.setxattr(f, "user.overlay.nlink", b"U+1")
    blob = do_capture(up)
    assert blob is not None
    (m,) = members(blob.path)
    xattrs = {k: v for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
    assert set(xattrs) == {"SCHILY.xattr.user.keep", "SCHILY.xattr.security.capability"}
    got = next(iter(TarReader(io.BytesIO(blob.path.read_bytes()))))
    assert dict(got.xattrs)["security.capability"] == CAP_NET_BIND


@needs_root
def test_whiteouts(tmp_path: Path) -> None:
    up, top, bottom = tmp_path / "up", tmp_path / "l2", tmp_path / "l1"
    for d in (up, top, bottom):
        (d / "d").mkdir(parents=True)
    (bottom / "gone").write_text("in l1")
    whiteout(up / "gone")  # hides l1/gone: kept
    whiteout(up / "never")  # nothing below: dropped
    (bottom / "d" / "hidden").write_text("")
    whiteout(top / "d" / "hidden")  # l2 already hides l1/d/hidden
    whiteout(up / "d" / "hidden")  # so nothing to hide: dropped
    (bottom / "d" / "under_opaque").write_text("")
    opaque(top / "d")  # l2/d is opaque: l1/d/* invisible
    whiteout(up / "d" / "under_opaque")  # dropped
    (top / "d" / "visible").write_text("")
    whiteout(up / "d" / "visible")  # kept
    for d in (up, top, bottom):  # d identical everywhere: a copy-up, left out
        os.utime(d / "d", ns=(0, 10**9))
    blob = do_capture(up, [top, bottom])
    assert blob is not None
    got = members(blob.path)
    assert [m.name for m in got] == [".wh.gone", "d/.wh.visible"]
    assert all(m.isreg() and m.size == 0 for m in got)


@needs_root
def test_nothing_to_record_gives_none(tmp_path: Path) -> None:
    up, low = tmp_path / "up", tmp_path / "low"
    up.mkdir()
    low.mkdir()
    assert do_capture(up) is None
    assert not (tmp_path / "up.tar").exists()
    whiteout(up / "never_was")
    (up / "copied").mkdir()
    (low / "copied").mkdir()
    os.utime(up / "copied", ns=(0, 5))
    os.utime(low / "copied", ns=(0, 5))
    assert do_capture(up, [low]) is None
    assert not (tmp_path / "up.tar").exists()


@needs_root
def test_opaque_directory(tmp_path: Path) -> None:
    up, low = tmp_path / "up", tmp_path / "low"
    (up / "re" / "sub").mkdir(parents=True)
    (up / "fresh").mkdir()
    (low / "re" / "old").mkdir(parents=True)
    (up / "re" / "-first").write_text("n")
    (up / "re" / "sub" / "f").write_text("n")
    whiteout(up / "re" / "old")  # inside an opaque dir a whiteout hides nothing
    opaque(up / "re")
    opaque(up / "fresh")  # opaque over nothing: no marker needed
    blob = do_capture(up, [low])
    assert blob is not None
    # whiteouts come before sibling entries (image-spec layer.md), even "-first" < ".wh."
    assert names(blob.path) == ["fresh", "re", "re/.wh..wh..opq", "re/-first", "re/sub", "re/sub/f"]


@needs_root
def test_copied_up_dirs_are_left_out(tmp_path: Path) -> None:
    up, low = tmp_path / "up", tmp_path / "low"
    for top in (low, up):
        (top / "usr" / "lib" / "deep").mkdir(parents=True)
        (top / "etc").mkdir()
        (top / "usr" / "lib" / "deep" / "file").write_text("v1" if top == low else "v2")
        for d in ("usr", "usr/lib", "usr/lib/deep", "etc"):
            os.chmod(top / d, 0o755)
            os.utime(top / d, ns=(0, 1_600_000_000_000_000_001))
    os.setxattr(up / "usr", "trusted.overlay.origin", b"fh")  # overlay bookkeeping: ignored
    os.setxattr(up / "usr" / "lib", "trusted.overlay.impure", b"y")
    (up / "etc" / "new").write_text("x")  # etc: a changed dir, but with its old mtime...
    os.utime(up / "etc", ns=(0, 1_600_000_000_000_000_002))  # ...no: mtime moved by 1 ns
    blob = do_capture(up, [low])
    assert blob is not None
    assert names(blob.path) == ["etc", "etc/new", "usr/lib/deep/file"]
    os.chmod(up / "usr" / "lib", 0o700)
    os.setxattr(up / "usr", "user.tag", b"1")
    blob = do_capture(up, [low])
    assert blob is not None
    assert names(blob.path) == ["etc", "etc/new", "usr", "usr/lib", "usr/lib/deep/file"]


@needs_root
@pytest.mark.parametrize(
    ("xattr", "value"),
    [
        ("trusted.overlay.redirect", b"/elsewhere"),
        ("trusted.overlay.metacopy", b""),
        ("user.overlay.redirect", b"x"),
        ("trusted.overlay.opaque", b"x"),
        ("trusted.overlay.whiteout", b""),
    ],
)
def test_unknown_overlay_state_is_refused(tmp_path: Path, xattr: str, value: bytes) -> None:
    up = tmp_path / "up"
    (up / "d").mkdir(parents=True)
    target = up / "d" if "opaque" in xattr or "redirect" in xattr else up / "d" / "f"
    if target.name == "f":
        target.write_text("x")
    os.setxattr(target, xattr, value)
    with pytest.raises(LayerError):
        do_capture(up)
    assert not (tmp_path / "up.tar").exists()


def test_files_named_like_whiteouts_are_refused(tmp_path: Path) -> None:
    up = tmp_path / "up"
    up.mkdir()
    (up / ".wh.sneaky").write_text("")
    with pytest.raises(LayerError):
        do_capture(up)


def test_order_is_tree_order_by_bytes(tmp_path: Path) -> None:
    up = tmp_path / "up"
    up.mkdir()
    for name in [b"b", b"a-b", b"\xc3\xa9", b"\xff", b"A", b"a.b"]:
        (up / os.fsdecode(name)).write_text("")
    (up / "a").mkdir()
    (up / "a" / "b").write_text("")
    blob = do_capture(up)
    assert blob is not None
    assert [os.fsencode(n) for n in names(blob.path)] == [
        b"A",
        b"a",
        b"a/b",
        b"a-b",
        b"a.b",
        b"b",
        b"\xc3\xa9",
        b"\xff",
    ]


@needs_root
def test_special_files(tmp_path: Path) -> None:
    import socket

    up = tmp_path / "up"
    up.mkdir()
    os.mknod(up / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(up / "loop9", stat.S_IFBLK | 0o660, os.makedev(7, 9))
    os.chmod(up / "loop9", 0o660)
    os.chown(up / "loop9", 0, 6)
    os.mkfifo(up / "fifo", 0o600)
    os.symlink("/abs/target", up / "link")
    (up / "suid").write_text("")
    os.chown(up / "suid", 12345678, 5)  # above the 7-digit octal field: a pax record
    os.chmod(up / "suid", 0o4755)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(up / "sock"))
    sock.close()
    blob = do_capture(up)
    assert blob is not None
    got = {m.name: m for m in members(blob.path)}
    assert set(got) == {"null", "loop9", "fifo", "link", "suid"}  # no socket
    assert got["null"].ischr() and (got["null"].devmajor, got["null"].devminor) == (1, 3)
    assert got["loop9"].isblk() and got["loop9"].gid == 6 and got["loop9"].mode == 0o660
    assert got["fifo"].isfifo()
    assert got["link"].issym() and got["link"].linkname == "/abs/target"
    assert got["suid"].mode == 0o4755 and got["suid"].uid == 12345678


def test_big_file_is_streamed(tmp_path: Path) -> None:
    up = tmp_path / "up"
    up.mkdir()
    data = os.urandom(3 << 20) + b"tail"
    (up / "big").write_bytes(data)
    blob = do_capture(up)
    assert blob is not None
    assert blob.size == BLOCK + len(data) + (-len(data) % BLOCK) + 2 * BLOCK
    with tarfile.open(blob.path) as tf:
        f = tf.extractfile("big")
        assert f is not None and f.read() == data
