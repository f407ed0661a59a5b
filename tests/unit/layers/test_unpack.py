"""unpack: a tar archive (plain or compressed) → a directory in an image rootfs, safely.

Tests follow docs/security.md families A–E; each checks that a sentinel directory beside the
root, and the host's /etc, are untouched (and that no descriptor leaked).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import stat
import subprocess
import tarfile
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stepbuild.errors import LayerError
from stepbuild.fs.rootpath import open_in_root
from stepbuild.layers.tar import (
    BLOCK,
    CHRTYPE,
    DIRTYPE,
    END_OF_ARCHIVE,
    FIFOTYPE,
    LNKTYPE,
    REGTYPE,
    SYMTYPE,
    Header,
    _pax_record,
    encode_header,
)
from stepbuild.layers.unpack import is_archive, unpack_archive
from tests.hostwatch import etc_state, leaked_under, open_descriptors
from tests.tars import CAP_NET_BIND, ROOT, entry, make_tar, needs_root, raw_meta, reg

# =============================================================================================
# helpers


def snapshot(top: Path) -> dict[str, tuple[object, ...]]:
    """Everything about a tree that a layer or an archive can carry (but atime/ctime)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            s = p.lstat()
            if stat.S_ISREG(s.st_mode):
                extra: object = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(s.st_mode):
                extra = os.readlink(p)
            else:
                extra = s.st_rdev
            xattrs = (
                {} if stat.S_ISLNK(s.st_mode) else {k: os.getxattr(p, k) for k in os.listxattr(p)}
            )
            out[str(p.relative_to(top))] = (
                s.st_mode,
                s.st_uid,
                s.st_gid,
                s.st_mtime_ns,
                extra,
                sorted(xattrs.items()),
            )
    return out


# =============================================================================================
# unpack


class Env:
    """tmp/root (an image rootfs), tmp/sentinel beside it, and where archives are written."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        (self.root / "etc").mkdir(parents=True)
        (self.root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
        self.sentinel = base / "sentinel"
        self.sentinel.mkdir()
        (self.sentinel / "file").write_text("host")
        self.archives = base / "archives"
        self.archives.mkdir()
        self._before = (snapshot(self.sentinel), snapshot(self.archives), etc_state())
        self._fds = open_descriptors()

    def tar(self, data: bytes, name: str = "a.tar") -> Path:
        path = self.archives / name
        path.write_bytes(data)
        self._before = (self._before[0], snapshot(self.archives), self._before[2])
        return path

    def unpack(self, data: bytes, dest: str = "/", **kw: int) -> None:
        unpack_archive(self.tar(data), self.root, dest, **kw)

    def check_untouched(self) -> None:
        assert (snapshot(self.sentinel), snapshot(self.archives), etc_state()) == self._before
        assert sorted(p.name for p in self.base.iterdir()) == ["archives", "root", "sentinel"]
        assert not (leaked := leaked_under(self.base, self._fds)), f"descriptors leaked: {leaked}"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.check_untouched()


SAMPLE = make_tar(
    entry(DIRTYPE, "app/", mtime_ns=10**9),
    reg("app/main.py", b"print('hi')\n", mtime_ns=2 * 10**9),
    entry(SYMTYPE, "app/current", "main.py", mode=0o777),
)

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "plain": lambda b: b,
    "gzip": lambda b: gzip.compress(b, mtime=0),
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_every_compression_unpacks(env: Env, kind: str) -> None:
    data = COMPRESSORS[kind](SAMPLE)
    assert is_archive(env.tar(data))
    env.unpack(data, "/srv")
    assert (env.root / "srv" / "app" / "main.py").read_text() == "print('hi')\n"
    assert os.readlink(env.root / "srv" / "app" / "current") == "main.py"


def test_multi_frame_zstd_and_multi_member_gzip(env: Env) -> None:
    half = len(SAMPLE) // 2
    z = zstandard.ZstdCompressor()
    env.unpack(z.compress(SAMPLE[:half]) + z.compress(SAMPLE[half:]), "/z")
    env.unpack(gzip.compress(SAMPLE[:half]) + gzip.compress(SAMPLE[half:]), "/g")
    assert (env.root / "z" / "app" / "main.py").is_file()
    assert (env.root / "g" / "app" / "main.py").is_file()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"just some text\n" * 100,
        gzip.compress(b"a gzipped text file, not a tar\n" * 50),
        zstandard.ZstdCompressor().compress(b"zstd text " * 100),
        bytes(10240),  # an empty tar: nothing to unpack, so ADD copies it (as Docker does)
        b"\x1f\x8b\x08garbage",
        SAMPLE[:300],  # a truncated first header
    ],
    ids=["empty", "text", "gzip-text", "zstd-text", "empty-tar", "bad-gzip", "truncated"],
)
def test_not_an_archive(env: Env, data: bytes) -> None:
    path = env.tar(data)
    assert not is_archive(path)
    if data != bytes(10240):
        with pytest.raises(LayerError):
            unpack_archive(path, env.root, "/")


def test_not_a_tar_message(env: Env) -> None:
    with pytest.raises(LayerError, match="not a tar archive"):
        env.unpack(b"hello world\n" * 100)


# --- family A: entry names -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "lands"),
    [
        ("/etc/abs", "dest/etc/abs"),
        ("../../../../climb", "dest/climb"),
        ("a/../../b/../../c", "dest/c"),
        ("./x/./y", "dest/x/y"),
        ("//double//slash", "dest/double/slash"),
    ],
)
def test_names_are_contained(env: Env, name: str, lands: str) -> None:
    env.unpack(make_tar(reg(name, b"x")), "/dest")
    assert (env.root / lands).read_bytes() == b"x"


@pytest.mark.parametrize("key", [b"path", b"linkpath"])
def test_nul_in_name_is_refused(env: Env, key: bytes) -> None:
    # In a ustar field NUL ends the name; only a pax record can carry one.
    pax = raw_meta(b"x", _pax_record(key, b"evil\0/etc/passwd"))
    with pytest.raises(LayerError, match="NUL"):
        env.unpack(pax + make_tar(entry(SYMTYPE, "s", "t")))
    with pytest.raises(ValueError):
        encode_header(Header(name=b"a\0b", type=REGTYPE))


@pytest.mark.parametrize("name", ["./", ".", "/", "..", "a/.."])
def test_entries_for_the_root_itself(env: Env, name: str) -> None:
    env.unpack(make_tar(entry(DIRTYPE, name, mode=0o700)))  # a dir: merged, root kept as it is
    assert stat.S_IMODE(env.root.stat().st_mode) != 0o700
    with pytest.raises(LayerError, match="itself"):
        env.unpack(make_tar(reg(name, b"x")))
    with pytest.raises(LayerError, match="itself"):
        env.unpack(make_tar(entry(SYMTYPE, name, "/etc")))


def test_long_names(env: Env) -> None:
    deep = "/".join(["d" * 200] * 30) + "/f"  # 6 KB: longer than PATH_MAX, fine fd by fd
    env.unpack(make_tar(reg(deep, b"deep")))
    root_fd = os.open(env.root, os.O_RDONLY)
    try:
        with open(open_in_root(root_fd, deep, os.O_RDONLY), "rb") as f:
            assert f.read() == b"deep"
    finally:
        os.close(root_fd)
    with pytest.raises(LayerError):
        env.unpack(make_tar(reg("n" * 300, b"x")))  # NAME_MAX is 255


def test_duplicates_last_wins(env: Env) -> None:
    env.unpack(
        make_tar(
            reg("f", b"one"),
            reg("f", b"two"),
            entry(DIRTYPE, "d/"),
            reg("d/child", b"c"),
            reg("d", b"now a file"),
            reg("s", b"file"),
            entry(SYMTYPE, "s", "f"),
            entry(SYMTYPE, "t", "/etc"),
            entry(DIRTYPE, "t/"),
            reg("t/in_t", b"t"),
        )
    )
    r = env.root
    assert (r / "f").read_bytes() == b"two"
    assert (r / "d").read_bytes() == b"now a file"
    assert os.readlink(r / "s") == "f"
    assert (r / "t").is_dir() and not (r / "t").is_symlink()
    assert (r / "t" / "in_t").read_bytes() == b"t" and not (r / "etc" / "in_t").exists()


# --- family B: links -------------------------------------------------------------------------


def test_file_through_an_absolute_symlink_lands_in_the_root(env: Env) -> None:
    env.unpack(make_tar(entry(SYMTYPE, "a", "/etc"), reg("a/passwd", b"pwned\n")))
    assert (env.root / "etc" / "passwd").read_bytes() == b"pwned\n"  # the image's, not ours


def test_symlink_to_the_sentinel(env: Env) -> None:
    env.unpack(
        make_tar(
            entry(SYMTYPE, "abs", str(env.sentinel)),
            entry(SYMTYPE, "rel", "../sentinel"),
            entry(SYMTYPE, "up", "../../../../../../../.."),
            reg("abs/file", b"1"),
            reg("rel/file", b"2"),
            reg("up/sentinel/file", b"3"),
        ),
        "/",
    )
    inside = env.root / str(env.sentinel).lstrip("/")
    assert (inside / "file").read_bytes() == b"1"
    assert (env.root / "sentinel" / "file").read_bytes() == b"3"


def test_symlink_chain_leading_out(env: Env) -> None:
    env.unpack(
        make_tar(
            entry(SYMTYPE, "one", "two/.."),
            entry(SYMTYPE, "two", "three/../.."),
            entry(SYMTYPE, "three", "/.."),
            reg("one/sentinel/file", b"chain"),
        ),
        "/deep/dest",
    )
    assert (env.root / "sentinel" / "file").read_bytes() == b"chain"


def test_symlink_loop_is_an_error(env: Env) -> None:
    with pytest.raises(LayerError):
        env.unpack(make_tar(entry(SYMTYPE, "l", "l"), reg("l/x", b"")))


def test_dest_through_a_symlink(env: Env) -> None:
    (env.root / "srv").symlink_to(str(env.sentinel))
    env.unpack(SAMPLE, "/srv/app")
    assert (env.root / str(env.sentinel).lstrip("/") / "app" / "app" / "main.py").is_file()


def test_hard_links(env: Env) -> None:
    env.unpack(make_tar(reg("a/orig", b"data"), entry(LNKTYPE, "b/link", "/a/../a/orig")))
    assert os.path.samefile(env.root / "a" / "orig", env.root / "b" / "link")


@pytest.mark.parametrize(
    "target",
    ["../sentinel/file", "../../../../sentinel/file", "/etc/passwd", "etc/passwd", "missing"],
)
def test_hard_links_only_to_what_the_archive_made(env: Env, target: str) -> None:
    (env.root / "sentinel").mkdir()
    (env.root / "sentinel" / "file").write_text("image file")
    with pytest.raises(LayerError, match="hard link"):
        env.unpack(make_tar(entry(LNKTYPE, "h", target)))
    assert (env.root / "etc" / "passwd").stat().st_nlink == 1


def test_hard_link_through_a_symlink_to_outside(env: Env) -> None:
    with pytest.raises(LayerError):
        env.unpack(make_tar(entry(SYMTYPE, "s", str(env.sentinel)), entry(LNKTYPE, "h", "s/file")))


def test_dir_replaced_by_a_symlink_mid_extraction(env: Env) -> None:
    env.unpack(
        make_tar(
            entry(DIRTYPE, "d/"),
            reg("d/first", b"1"),
            entry(SYMTYPE, "d", "/etc"),
            reg("d/second", b"2"),
        )
    )
    assert (env.root / "etc" / "second").read_bytes() == b"2"
    assert not (env.root / "etc" / "first").exists()


# --- family C: whiteout-looking names are plain files in an ADD archive -----------------------


def test_whiteout_names_are_plain_files_in_add(env: Env) -> None:
    env.unpack(make_tar(reg(".wh.passwd", b""), reg("etc/.wh..wh..opq", b"")))
    assert (env.root / "etc" / "passwd").exists()
    assert (env.root / ".wh.passwd").is_file()


# --- family D: special files and metadata -----------------------------------------------------


@needs_root
def test_devices_fifos_setuid_xattrs(env: Env) -> None:
    env.unpack(
        make_tar(
            entry(CHRTYPE, "dev/null", devmajor=1, devminor=3, mode=0o666),
            entry(FIFOTYPE, "run/fifo", mode=0o620, uid=7, gid=8),
            reg(
                "bin/ping",
                b"elf",
                mode=0o4755,
                uid=0,
                gid=0,
                xattrs=(("security.capability", CAP_NET_BIND),),
            ),
            reg("bin/sg", b"elf", mode=0o2711, uid=3, gid=4, xattrs=(("user.k", b"v"),)),
            reg("bin/ov", b"", xattrs=(("trusted.overlay.opaque", b"y"),)),
        )
    )
    r = env.root
    s = (r / "dev" / "null").lstat()
    assert stat.S_ISCHR(s.st_mode) and s.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(s.st_mode) == 0o666
    s = (r / "run" / "fifo").lstat()
    assert stat.S_ISFIFO(s.st_mode) and stat.S_IMODE(s.st_mode) == 0o620
    assert (s.st_uid, s.st_gid) == (7, 8)
    assert stat.S_IMODE((r / "bin" / "ping").stat().st_mode) == 0o4755
    assert os.getxattr(r / "bin" / "ping", "security.capability") == CAP_NET_BIND
    s = (r / "bin" / "sg").stat()
    assert (stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid) == (0o2711, 3, 4)
    assert os.getxattr(r / "bin" / "sg", "user.k") == b"v"
    assert os.listxattr(r / "bin" / "ov") == []


@pytest.mark.parametrize(("major", "minor"), [(4096, 0), (0, 1 << 20), ((1 << 21) - 1, 3)])
def test_device_numbers_out_of_range(env: Env, major: int, minor: int) -> None:
    with pytest.raises(LayerError, match="out of range"):
        env.unpack(make_tar(entry(CHRTYPE, "dev/bad", devmajor=major, devminor=minor)))


@needs_root
def test_chown_override(env: Env) -> None:
    env.unpack(
        make_tar(
            reg("implicit/parent/f", b"x", uid=5, gid=5),
            entry(DIRTYPE, "d/", uid=6, gid=6),
            entry(SYMTYPE, "d/l", "x", uid=7, gid=7),
        ),
        "/opt/new",
        uid=1000,
        gid=2000,
    )
    for p in [
        "opt",
        "opt/new",
        "opt/new/implicit",
        "opt/new/implicit/parent/f",
        "opt/new/d",
        "opt/new/d/l",
    ]:
        s = (env.root / p).lstat()
        assert (s.st_uid, s.st_gid) == (1000, 2000), p


@needs_root
def test_numeric_ids_only(env: Env) -> None:
    # uname/gname are never looked up: an archive naming "root" with uid 4242 gives 4242
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("owned")
        info.uid, info.gid, info.uname, info.gname = 4242, 4343, "root", "root"
        tf.addfile(info, io.BytesIO(b""))
    env.unpack(buf.getvalue())
    s = (env.root / "owned").stat()
    assert (s.st_uid, s.st_gid) == (4242, 4343)


def test_directory_mtimes_set_after_children(env: Env) -> None:
    env.unpack(
        make_tar(
            entry(DIRTYPE, "d/", mtime_ns=1000 * 10**9, mode=0o555),
            entry(DIRTYPE, "d/e/", mtime_ns=2000 * 10**9),
            reg("d/e/f", b"x", mtime_ns=3000 * 10**9),
            reg("d/g", b"y", mtime_ns=4000 * 10**9),
        )
    )
    r = env.root
    assert (r / "d").stat().st_mtime_ns == 1000 * 10**9
    assert stat.S_IMODE((r / "d").stat().st_mode) == 0o555
    assert (r / "d" / "e").stat().st_mtime_ns == 2000 * 10**9
    assert (r / "d" / "e" / "f").stat().st_mtime_ns == 3000 * 10**9


def test_existing_dirs_are_merged_files_replaced(env: Env) -> None:
    (env.root / "etc" / "keep").write_text("kept")
    (env.root / "etc" / "hosts").symlink_to("/nonexistent")
    env.unpack(make_tar(entry(DIRTYPE, "etc/"), reg("etc/hosts", b"127.0.0.1 x\n")))
    assert (env.root / "etc" / "keep").read_text() == "kept"
    assert not (env.root / "etc" / "hosts").is_symlink()
    assert (env.root / "etc" / "hosts").read_bytes() == b"127.0.0.1 x\n"


# --- family E: format abuse and resource exhaustion ------------------------------------------


def test_truncated_archive(env: Env) -> None:
    data = make_tar(reg("f", b"x" * 5000))
    with pytest.raises(LayerError, match="truncated"):
        env.unpack(data[: BLOCK + 1000])


def test_corrupt_header_after_the_first(env: Env) -> None:
    data = bytearray(make_tar(reg("a", b"1"), reg("b", b"2")))
    data[2 * BLOCK + 10] ^= 0xFF  # inside b's header
    with pytest.raises(LayerError, match="checksum"):
        env.unpack(bytes(data))
    assert (env.root / "a").exists()


@pytest.mark.parametrize(
    ("prefix", "match"),
    [
        (raw_meta(b"x", b"9" * 30), "pax"),
        (raw_meta(b"x", b"5 a=b\n"), "pax"),
        (raw_meta(b"x", b"12 path=abc"), "pax"),
        (raw_meta(b"x", b"%d path=a\n" % 9 + b"x" * (1 << 20)), "metadata header"),
        (raw_meta(b"L", b"n" * ((1 << 20) + 1)), "metadata header"),
        (raw_meta(b"x", _pax_record(b"GNU.sparse.size", b"1")), "sparse"),
        (raw_meta(b"x", _pax_record(b"size", b"x")), "pax"),
        (b"".join(raw_meta(b"x", _pax_record(b"uid", b"1")) for _ in range(17)), "in a row"),
    ],
    ids=[
        "no-length",
        "short-length",
        "no-newline",
        "huge-pax",
        "huge-longname",
        "sparse",
        "bad-size",
        "meta-run",
    ],
)
def test_malformed_metadata(env: Env, prefix: bytes, match: str) -> None:
    with pytest.raises(LayerError, match=match):
        env.unpack(prefix + make_tar(reg("f", b"x")))


def test_unsupported_entry_types(env: Env) -> None:
    for kind in (b"S", b"M", b"Z"):
        data = bytearray(make_tar(reg("f", b"")))
        data[156:157] = kind
        data[148:156] = b" " * 8
        data[148:156] = b"%06o\0 " % sum(data[:BLOCK])
        with pytest.raises(LayerError, match="unsupported"):
            env.unpack(bytes(data))


def test_pax_overrides_and_gnu_longnames(env: Env) -> None:
    long = "l" * 150
    data = (
        raw_meta(b"x", _pax_record(b"path", long.encode()) + _pax_record(b"mtime", b"12.75"))
        + make_tar(reg("short", b"pax"), end=False)
        + raw_meta(b"L", b"gnu/" + b"g" * 120 + b"\0")
        + make_tar(reg("ignored", b"gnu"), end=False)
        + raw_meta(b"g", _pax_record(b"uid", b"77"))
        + make_tar(reg("glob", b"g"))
    )
    env.unpack(data)
    assert (env.root / long).read_bytes() == b"pax"
    assert (env.root / long).stat().st_mtime_ns == 12_750_000_000
    assert (env.root / "gnu" / ("g" * 120)).read_bytes() == b"gnu"
    if ROOT:
        assert (env.root / "glob").stat().st_uid == 77


def test_decompression_is_streamed(env: Env) -> None:
    size = 24 << 20
    data = gzip.compress(
        encode_header(Header(name=b"zeros", type=REGTYPE, size=size))
        + bytes(size)
        + END_OF_ARCHIVE,
        compresslevel=1,
    )
    path = env.tar(data)
    tracemalloc.start()
    try:
        unpack_archive(path, env.root, "/")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (env.root / "zeros").stat().st_size == size
    assert peak < 8 << 20


def test_gnu_tar_archive(env: Env, tmp_path: Path) -> None:
    src = tmp_path / "archives" / "src"
    (src / "d" / ("x" * 120)).mkdir(parents=True)
    (src / "d" / "f").write_text("f")
    os.link(src / "d" / "f", src / "d" / "hard")
    (src / "d" / "s").symlink_to("f")
    os.setxattr(src / "d" / "f", "user.k", b"v")
    for fmt, flags in [("gnu", []), ("posix", ["--xattrs"])]:
        out = tmp_path / "archives" / f"{fmt}.tar.xz"
        subprocess.run(
            ["tar", *flags, f"--format={fmt}", "-cJf", str(out), "-C", str(src), "."], check=True
        )
        assert is_archive(out)
        unpack_archive(out, env.root, f"/{fmt}")
        copy = env.root / fmt
        assert (copy / "d" / "f").read_text() == "f"
        assert os.path.samefile(copy / "d" / "f", copy / "d" / "hard")
        assert os.readlink(copy / "d" / "s") == "f"
        assert (copy / "d" / ("x" * 120)).is_dir()
        if flags:
            assert os.getxattr(copy / "d" / "f", "user.k") == b"v"
        out.unlink()
    subprocess.run(["rm", "-rf", str(src)], check=True)
    env._before = (env._before[0], snapshot(env.archives), env._before[2])


# --- property: nothing is ever created outside the root --------------------------------------

NAME_PARTS = st.sampled_from(["a", "b", "..", ".", "", "etc", "sentinel", "x\u00e9", "\x01"])
LAST_PART = st.sampled_from(["a", "b", "f", "etc", "passwd", "sentinel", "x\u00e9", "..", "."])
NAMES = st.tuples(st.booleans(), st.lists(NAME_PARTS, max_size=5), LAST_PART).map(
    lambda t: ("/" if t[0] else "") + "/".join([*t[1], t[2]])
) | st.text(max_size=20)


@st.composite
def archive_entries(draw: st.DrawFn, sentinel: str) -> list[Header | tuple[Header, bytes]]:
    targets = (
        st.sampled_from(
            [
                "/",
                "..",
                "../..",
                "../../..",
                sentinel,
                sentinel + "/file",
                "../sentinel",
                "/etc",
                "/etc/passwd",
                "a",
                "a/b",
                "b/..",
                "sentinel",
            ]
        )
        | NAMES
    )
    out: list[Header | tuple[Header, bytes]] = []
    used: list[str] = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo"]))
        name = draw(NAMES)
        if kind == "file":
            out.append(reg(name.encode("utf-8", "surrogateescape"), b"payload"))
        elif kind == "dir":
            out.append(entry(DIRTYPE, name))
        elif kind == "fifo":
            out.append(entry(FIFOTYPE, name))
        elif kind == "symlink":
            out.append(entry(SYMTYPE, name, draw(targets)))
        else:
            choices = st.sampled_from(used) | targets if used else targets
            out.append(entry(LNKTYPE, name, draw(choices)))
        used.append(name)
    return out


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_property_nothing_escapes(tmp_path: Path, data: st.DataObject) -> None:
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    env = Env(base)
    entries = data.draw(archive_entries(str(env.sentinel)))
    dest = data.draw(st.sampled_from(["/", "/dest", "../../x", "/etc"]))
    try:
        env.unpack(make_tar(*entries), dest)
        event("unpacked")
    except LayerError as exc:
        event(f"refused: {str(exc).rsplit(': ', 1)[-1][:30]}")
    env.check_untouched()
    for dirpath, dirnames, filenames in os.walk(env.root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            assert env.root in p.parents
