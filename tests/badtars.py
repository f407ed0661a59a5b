"""The bad-tar corpus: layer tars that try to escape, confuse or exhaust an unpacker.

Written at test time (`corpus(sentinel)` builds them in memory, `write_corpus(dir, sentinel)`
writes them as files), never committed as binaries: every case is a few lines of code naming
what it tries, so a reader sees the attack and a diff shows a change. The tars are made by
our own writer (`stepbuild.layers.tar.encode_header`) plus hand-made headers for what a writer
must refuse to write (NUL in names, bad checksums, oversized metadata, truncation).

Each `Case` says what a layer unpacker must do with it (docs/security.md families A-E, rule 2):
either contain it inside the target (and `check` asserts where things landed) or refuse it
(`refused` is a regex the error message must match; the message must also name `entry`).
`sentinel` is a directory *beside* the target that no case may touch; some cases aim at its
absolute path. Used by tests/unit/layers/test_apply.py (apply_layer on each case) and
tests/integration/test_import.py (each case as the layer of an archive loaded into a store).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stepbuild.fs.rootpath import MAX_DEPTH
from stepbuild.layers.tar import (
    BLKTYPE,
    BLOCK,
    CHRTYPE,
    DIRTYPE,
    END_OF_ARCHIVE,
    FIFOTYPE,
    LNKTYPE,
    REGTYPE,
    SYMTYPE,
    Header,
    encode_header,
    padding,
)

OPAQUE = "trusted.overlay.opaque"
Check = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    """One bad tar. `data` is the uncompressed tar; exactly one of `refused` / `check`."""

    name: str
    family: str  # docs/security.md families: A names, B links, C whiteouts, D special, E format
    data: bytes
    refused: str | None = None  # regex over the error message
    entry: str | None = None  # the entry the error names (refused cases)
    check: Check | None = None  # assertions on the target after a contained apply


# --- writing tars ------------------------------------------------------------------------------


def reg(name: str | bytes, data: bytes = b"", mode: int = 0o644, **kw: object) -> bytes:
    """A regular file entry with its data."""
    n = name.encode() if isinstance(name, str) else name
    h = Header(name=n, type=REGTYPE, mode=mode, size=len(data), **kw)  # type: ignore[arg-type]
    return encode_header(h) + data + padding(len(data))


def ent(kind: bytes, name: str, link: str = "", mode: int = 0o755, **kw: object) -> bytes:
    """A non-regular entry: DIRTYPE, SYMTYPE, LNKTYPE, CHRTYPE, BLKTYPE, FIFOTYPE."""
    h = Header(name=name.encode(), type=kind, mode=mode, linkname=link.encode(), **kw)  # type: ignore[arg-type]
    return encode_header(h)


def tar(*entries: bytes, end: bool = True) -> bytes:
    return b"".join(entries) + (END_OF_ARCHIVE if end else b"")


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n += 1
    return str(n).encode() + body


def meta(kind: bytes, data: bytes, size: int | None = None) -> bytes:
    """A metadata header (pax `x`/`g`, GNU `L`/`K`) with `data`; `size` may lie."""
    block = bytearray(encode_header(Header(name=b"././@PaxHeader", type=REGTYPE,
                                           size=len(data) if size is None else size)))
    block[156:157] = kind
    _fix_checksum(block)
    return bytes(block) + data + padding(len(data))


def _fix_checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block[:BLOCK])


def with_size_field(entry: bytes, field: bytes) -> bytes:
    """`entry`'s header with a raw 12-byte size field (e.g. GNU base-256)."""
    block = bytearray(entry[:BLOCK])
    block[124:136] = field
    _fix_checksum(block)
    return bytes(block) + entry[BLOCK:]


# --- checks ------------------------------------------------------------------------------------


def is_whiteout(path: Path) -> bool:
    st = path.lstat()
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _expect(files: dict[str, bytes | str | None]) -> Check:
    """Check that target/<rel> holds bytes, is a symlink to str, or (None) is a whiteout."""
    def check(target: Path) -> None:
        for rel, want in files.items():
            path = target / rel
            if want is None:
                assert is_whiteout(path), f"{path} is not a whiteout"
            elif isinstance(want, str):
                assert os.readlink(path) == want, path
            else:
                assert path.read_bytes() == want, path
    return check


def _all(*checks: Check) -> Check:
    def check(target: Path) -> None:
        for c in checks:
            c(target)
    return check


def _mode(rel: str, mode: int) -> Check:
    def check(target: Path) -> None:
        assert stat.S_IMODE((target / rel).lstat().st_mode) == mode, rel
    return check


def _opaque(rel: str, *, yes: bool = True) -> Check:
    def check(target: Path) -> None:
        assert (target / rel).is_dir() and not (target / rel).is_symlink(), rel
        assert is_opaque(target / rel) == yes, f"{rel} opaque should be {yes}"
    return check


def _absent(*rels: str) -> Check:
    def check(target: Path) -> None:
        for rel in rels:
            assert not os.path.lexists(target / rel), rel
    return check


def _device(rel: str, kind: int, major: int, minor: int) -> Check:
    def check(target: Path) -> None:
        st = (target / rel).lstat()
        assert stat.S_IFMT(st.st_mode) == kind and st.st_rdev == os.makedev(major, minor), rel
    return check


def _xattrs(rel: str, want: dict[str, bytes]) -> Check:
    def check(target: Path) -> None:
        path = target / rel
        got = {k: os.getxattr(path, k, follow_symlinks=False)
               for k in os.listxattr(path, follow_symlinks=False)}
        assert got == want, (rel, got)
    return check


# --- the corpus --------------------------------------------------------------------------------


def _symlink_chain(links: int, levels: int) -> bytes:
    """`s<k>` → `s<k-1>/d/d/…` (`levels` more dirs each; a symlink target is at most 4,095
    bytes, so depth past rootpath's cap takes a chain); then a file under the last one."""
    entries = [ent(SYMTYPE, "s0", "/".join(["d"] * levels))]
    for k in range(1, links):
        entries.append(ent(SYMTYPE, f"s{k}", f"s{k - 1}/" + "/".join(["d"] * levels)))
    return tar(*entries, reg(f"s{links - 1}/f", b"x"))


def corpus(sentinel: Path) -> list[Case]:
    """Every case; `sentinel` is the absolute path of the dir beside the target."""
    s = str(sentinel)
    inside = s.lstrip("/")  # where an absolute path to the sentinel lands inside the target
    cases = [
        # A. entry names
        Case("abs-path", "A", tar(reg("/etc/abs", b"x")), check=_expect({"etc/abs": b"x"})),
        Case("abs-sentinel-path", "A", tar(reg(f"{s}/file", b"x")),
             check=_expect({f"{inside}/file": b"x"})),
        Case("dotdot", "A", tar(reg("../../../../../escape", b"x")),
             check=_expect({"escape": b"x"})),
        Case("dotdot-to-sentinel", "A", tar(reg("../sentinel/file", b"x")),
             check=_expect({"sentinel/file": b"x"})),
        Case("dotdot-mixed", "A", tar(reg("a/../../b/../../c", b"x"), reg("./d/./e", b"y")),
             check=_expect({"c": b"x", "d/e": b"y"})),
        Case("nul-in-name", "A",
             meta(b"x", pax_record(b"path", b"evil\0/../../x")) + tar(reg("placeholder")),
             refused="NUL", entry="evil"),
        Case("nul-in-link", "A",
             meta(b"x", pax_record(b"linkpath", b"/etc\0passwd")) + tar(ent(SYMTYPE, "s", "x")),
             refused="NUL", entry="s"),
        Case("name-too-long", "A", tar(reg("n" * 300, b"x")),
             refused="too long", entry="n" * 300),
        Case("path-longer-than-path-max", "A", tar(reg("/".join(["d" * 200] * 30) + "/f", b"x")),
             check=lambda t: None),  # fine fd by fd: only each component has a limit
        # 10,000 levels are fine (issue 11); past rootpath's MAX_DEPTH (16,384) is refused.
        Case("too-deep", "A", tar(reg("d/" * (MAX_DEPTH + 1) + "f", b"x")),
             refused="nested more than", entry="d/d/d/"),
        Case("too-deep-through-symlinks", "A", _symlink_chain(9, 2000),
             refused="too many nested directories", entry="s8/f"),
        Case("duplicates-last-wins", "A",
             tar(reg("f", b"one"), reg("f", b"two"), ent(DIRTYPE, "d/"), reg("d/child", b"c"),
                 reg("d", b"now a file"), reg("s", b"file"), ent(SYMTYPE, "s", "f")),
             check=_expect({"f": b"two", "d": b"now a file", "s": "f"})),
        Case("root-as-file", "A", tar(reg(".", b"x")), refused="itself", entry="."),
        Case("root-as-dir-ignored", "A", tar(ent(DIRTYPE, "./", mode=0o700), reg("a", b"a")),
             check=_all(_expect({"a": b"a"}), _mode(".", 0o755))),
        # B. symlinks and hard links
        Case("symlink-root-then-write", "B", tar(ent(SYMTYPE, "s", "/"), reg("s/landed", b"x")),
             check=_expect({"landed": b"x", "s": "/"})),
        Case("symlink-to-sentinel", "B", tar(ent(SYMTYPE, "s", s), reg("s/file", b"x")),
             check=_expect({f"{inside}/file": b"x"})),
        Case("symlink-relative-escape", "B",
             tar(ent(SYMTYPE, "r", "../../../../../../sentinel"), reg("r/file", b"x")),
             check=_expect({"sentinel/file": b"x"})),
        Case("symlink-chain-out", "B",
             tar(ent(SYMTYPE, "one", "two/.."), ent(SYMTYPE, "two", "three/../.."),
                 ent(SYMTYPE, "three", "/.."), reg("one/sentinel/file", b"x")),
             check=_expect({"sentinel/file": b"x"})),
        Case("symlink-loop", "B", tar(ent(SYMTYPE, "l", "l"), reg("l/x", b"x")),
             refused="symbolic links", entry="l/x"),
        Case("symlink-swapped-mid-layer", "B",
             tar(ent(DIRTYPE, "d/"), reg("d/first", b"1"), ent(SYMTYPE, "d", "/etc"),
                 reg("d/second", b"2")),
             check=_all(_expect({"etc/second": b"2", "d": "/etc"}), _absent("etc/first"))),
        Case("hardlink-outside", "B", tar(ent(LNKTYPE, "h", "../sentinel/file")),
             refused="hard link", entry="h"),
        Case("hardlink-absolute", "B", tar(ent(LNKTYPE, "h", f"{s}/file")),
             refused="hard link", entry="h"),
        Case("hardlink-through-symlink", "B",
             tar(ent(SYMTYPE, "s", s), ent(LNKTYPE, "h", "s/file")),
             refused="hard link", entry="h"),
        Case("hardlink-inside", "B", tar(reg("a/orig", b"data"), ent(LNKTYPE, "b/h", "/a/orig")),
             check=lambda t: _samefile(t / "a/orig", t / "b/h")),
        # C. whiteouts
        Case("whiteout", "C", tar(ent(DIRTYPE, "etc/"), reg("etc/.wh.gone")),
             check=_all(_expect({"etc/gone": None}), _absent("etc/.wh.gone"))),
        Case("whiteout-of-dot", "C", tar(reg(".wh..")), refused="whiteout of", entry=".wh.."),
        Case("whiteout-of-dotdot", "C", tar(reg("a/.wh...")), refused="whiteout of",
             entry="a/.wh..."),
        Case("whiteout-of-nothing", "C", tar(reg("a/.wh.")), refused="whiteout of",
             entry="a/.wh."),
        Case("whiteout-outside", "C", tar(reg("../../../.wh.sentinel")),
             check=_expect({"sentinel": None})),
        Case("whiteout-through-symlink", "C",
             tar(ent(SYMTYPE, "s", s), reg("s/.wh.file")),
             refused="whiteout through the symlink 's'", entry="s/.wh.file"),
        Case("whiteout-with-data", "C", tar(reg(".wh.big", b"z" * 1000)),
             check=_expect({"big": None})),
        Case("whiteout-then-dir", "C", tar(reg(".wh.d"), ent(DIRTYPE, "d/"), reg("d/x", b"x")),
             check=_all(_opaque("d"), _expect({"d/x": b"x"}))),
        Case("dir-then-whiteout", "C", tar(ent(DIRTYPE, "d/"), reg("d/x", b"x"), reg(".wh.d")),
             check=_all(_opaque("d"), _expect({"d/x": b"x"}))),
        Case("file-then-whiteout", "C", tar(reg("f", b"kept"), reg(".wh.f")),
             check=_expect({"f": b"kept"})),
        Case("whiteout-then-file", "C", tar(reg(".wh.f"), reg("f", b"new")),
             check=_expect({"f": b"new"})),
        Case("whiteout-implicit-parents", "C", tar(reg("a/b/.wh.c")),
             check=_all(_expect({"a/b/c": None}), _mode("a/b", 0o755))),
        Case("wh-directory-component", "C", tar(reg(".wh.d/f", b"x")),
             refused=r"\.wh\.", entry=".wh.d/f"),
        Case("opaque", "C", tar(ent(DIRTYPE, "d/"), reg("d/.wh..wh..opq"), reg("d/x", b"x")),
             check=_all(_opaque("d"), _expect({"d/x": b"x"}), _absent("d/.wh..wh..opq"))),
        Case("opaque-without-dir-entry", "C", tar(reg("e/f/.wh..wh..opq")),
             check=_all(_opaque("e/f"), _opaque("e", yes=False))),
        Case("opaque-at-root", "C", tar(reg(".wh..wh..opq")), refused="layer root",
             entry=".wh..wh..opq"),
        Case("opaque-at-root-via-symlink", "C", tar(ent(SYMTYPE, "s", "/"),
                                                    reg("s/.wh..wh..opq")),
             refused="whiteout through the symlink 's'", entry="s/.wh..wh..opq"),
        Case("opaque-under-a-file", "C", tar(reg("f", b"x"), reg("f/.wh..wh..opq")),
             refused="not a directory", entry="f/.wh..wh..opq"),
        Case("opaque-through-symlink-to-sentinel", "C",
             tar(ent(SYMTYPE, "s", s), reg("s/.wh..wh..opq")),
             refused="whiteout through the symlink 's'", entry="s/.wh..wh..opq"),
        Case("aufs-metadata-skipped", "C",
             tar(ent(DIRTYPE, ".wh..wh.plnk/"), reg(".wh..wh.plnk/1.2", b"x"), reg("a", b"a")),
             check=_all(_expect({"a": b"a"}), _absent(".wh..wh.plnk"))),
        Case("whiteout-device-entry", "C", tar(ent(CHRTYPE, "fake", devmajor=0, devminor=0)),
             refused="whiteout", entry="fake"),
        # D. special files and metadata
        Case("devices-and-fifo", "D",
             tar(ent(CHRTYPE, "dev/null", mode=0o666, devmajor=1, devminor=3),
                 ent(BLKTYPE, "dev/sda", mode=0o660, devmajor=8, devminor=0),
                 ent(FIFOTYPE, "run/fifo", mode=0o620)),
             check=_all(_device("dev/null", stat.S_IFCHR, 1, 3),
                        _device("dev/sda", stat.S_IFBLK, 8, 0), _mode("run/fifo", 0o620))),
        Case("device-major-out-of-range", "D",
             tar(ent(CHRTYPE, "dev/bad", devmajor=4096, devminor=0)),
             refused="out of range", entry="dev/bad"),
        Case("device-minor-out-of-range", "D",
             tar(ent(BLKTYPE, "dev/bad", devmajor=8, devminor=1 << 20)),
             refused="out of range", entry="dev/bad"),
        Case("setuid-setgid-caps", "D",
             tar(reg("bin/su", b"elf", mode=0o4755), reg("bin/wall", b"elf", mode=0o2755, gid=5),
                 reg("bin/ping", b"elf", mode=0o755,
                     xattrs=(("security.capability", _CAP_NET_RAW),))),
             check=_all(_mode("bin/su", 0o4755), _mode("bin/wall", 0o2755),
                        _xattrs("bin/ping", {"security.capability": _CAP_NET_RAW}))),
        Case("overlay-xattrs-smuggled", "D",
             tar(ent(DIRTYPE, "d/", xattrs=((OPAQUE, b"y"),)),
                 ent(DIRTYPE, "r/", xattrs=(("trusted.overlay.redirect", b"/etc"),)),
                 reg("f", b"", xattrs=(("user.overlay.opaque", b"y"), ("user.ok", b"1")))),
             check=_all(_xattrs("d", {}), _xattrs("r", {}), _xattrs("f", {"user.ok": b"1"}))),
        # E. format abuse, resource exhaustion
        Case("huge-pax-header", "E",
             meta(b"x", pax_record(b"comment", b"x" * (2 << 20))) + tar(reg("f", b"x")),
             refused="metadata header", entry=None),
        Case("huge-gnu-longname", "E", meta(b"L", b"n" * ((1 << 20) + 1)) + tar(reg("f")),
             refused="metadata header", entry=None),
        Case("pax-size-lies", "E", meta(b"x", pax_record(b"size", b"999999999")) +
             tar(reg("f", b"x")), refused="truncated", entry=None),
        Case("negative-size", "E", tar(with_size_field(reg("f"), b"\xff" * 12)),
             refused="negative size", entry=None),
        Case("truncated-data", "E", tar(reg("f", b"x" * 5000))[: BLOCK + 1000],
             refused="truncated", entry=None),
        Case("truncated-header", "E", tar(reg("a", b"1"), reg("b", b"2"))[: 2 * BLOCK + 100],
             refused="truncated", entry=None),
        Case("bad-checksum", "E", _corrupt_second_header(), refused="checksum", entry=None),
        Case("sparse-file", "E", meta(b"x", pax_record(b"GNU.sparse.size", b"1")) +
             tar(reg("f", b"")), refused="sparse", entry=None),
        Case("metadata-run", "E",
             b"".join(meta(b"x", pax_record(b"uid", b"1")) for _ in range(17)) + tar(reg("f")),
             refused="in a row", entry=None),
        Case("not-a-tar", "E", b"this is not a tar archive\n" * 100, refused="not a tar",
             entry=None),
    ]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


# security.capability for cap_net_raw+ep (struct vfs_cap_data, revision 2)
_CAP_NET_RAW = b"\x01\x00\x00\x02" + (1 << 13).to_bytes(4, "little") + bytes(12)


def _corrupt_second_header() -> bytes:
    data = bytearray(tar(reg("a", b"1"), reg("b", b"2")))
    data[2 * BLOCK + 10] ^= 0xFF  # inside b's header, after a's header and data block
    return bytes(data)


def _samefile(a: Path, b: Path) -> None:
    assert os.path.samefile(a, b), (a, b)


def case_names() -> list[str]:
    """The case names, for pytest parametrisation (the sentinel path does not matter)."""
    return [c.name for c in corpus(Path("/nonexistent/sentinel"))]


def write_corpus(directory: Path, sentinel: Path) -> dict[str, Path]:
    """Write every case as `<directory>/<name>.tar`; return name → path."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in corpus(sentinel):
        path = directory / f"{case.name}.tar"
        path.write_bytes(case.data)
        paths[case.name] = path
    return paths
