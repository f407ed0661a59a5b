"""sources/context_tar.py: a context file sniffed (tar or Stepfile) and unpacked strictly.

Every compression the sniff knows is tried on real tars made by our writer; hostile entries
must be refused with a ContextError naming the entry, and (docs/security.md rule 11) the
sentinel directory beside the target must be untouched, whatever the outcome. The whole
bad-tar corpus (tests/badtars.py) is fed through `extract` too.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import stat
from pathlib import Path

import pytest
import zstandard

from stepbuild.errors import ContextError
from stepbuild.layers.tar import CHRTYPE, DIRTYPE, FIFOTYPE, LNKTYPE, SYMTYPE
from stepbuild.sources.context_tar import extract, sniff
from tests.badtars import case_names, corpus
from tests.tars import entry, make_tar, reg

COMPRESSORS = {
    "plain": lambda data: data,
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
}
CONTEXT = make_tar(entry(DIRTYPE, "./"), reg("./Stepfile", b"FROM scratch\n"),
                   entry(DIRTYPE, "src/"), reg("src/app.py", b"print(1)\n", mode=0o755,
                                                uid=1000, gid=1000),
                   entry(SYMTYPE, "src/link", "/etc/passwd"),
                   entry(LNKTYPE, "src/hard", "src/app.py"))


@pytest.fixture
def places(tmp_path: Path) -> tuple[Path, Path]:
    """(target, sentinel): an empty target dir and a sentinel dir beside it."""
    target = tmp_path / "target"
    target.mkdir()
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep").write_text("sentinel")
    return target, sentinel


def untouched(sentinel: Path) -> None:
    assert sorted(p.name for p in sentinel.iterdir()) == ["keep"]
    assert (sentinel / "keep").read_text() == "sentinel"


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "input"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_every_compression_is_sniffed_and_unpacked(tmp_path: Path, places: tuple[Path, Path],
                                                    kind: str) -> None:
    target, sentinel = places
    path = write(tmp_path, COMPRESSORS[kind](CONTEXT))
    assert sniff(path, "ctx") == "tar"
    extract(path, target, "ctx")
    assert (target / "Stepfile").read_bytes() == b"FROM scratch\n"
    app = target / "src" / "app.py"
    assert app.read_bytes() == b"print(1)\n"
    info = app.stat()
    assert stat.S_IMODE(info.st_mode) == 0o755
    assert (info.st_uid, info.st_gid) == (0, 0)  # owners mean nothing in a context
    assert os.readlink(target / "src" / "link") == "/etc/passwd"  # kept as data
    assert (target / "src" / "hard").stat().st_ino == info.st_ino
    untouched(sentinel)


@pytest.mark.parametrize("text", [b"FROM scratch\nCOPY . /\n", b"FROM busybox\n" * 100,
                                  b"# just a comment"])
def test_text_is_a_stepfile(tmp_path: Path, text: bytes) -> None:
    assert sniff(write(tmp_path, text), "stdin") == "text"


def test_compressed_data_that_is_no_tar_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ContextError, match="gzip data but not a tar archive"):
        sniff(write(tmp_path, gzip.compress(b"FROM scratch\n")), "stdin")


def test_corrupt_compressed_data_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ContextError, match="stdin: corrupt gzip data"):
        sniff(write(tmp_path, b"\x1f\x8b" + b"garbage" * 100), "stdin")


def test_empty_input_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ContextError, match="empty"):
        sniff(write(tmp_path, b""), "stdin")


def test_truncated_tar_is_an_error(tmp_path: Path, places: tuple[Path, Path]) -> None:
    target, sentinel = places
    path = write(tmp_path, CONTEXT[:2000])
    assert sniff(path, "stdin") == "tar"  # its first header is fine
    with pytest.raises(ContextError, match="^stdin: truncated tar archive"):
        extract(path, target, "stdin")
    untouched(sentinel)


@pytest.mark.parametrize(("entries", "named", "why"), [
    ((reg("../escape", b"x"),), "../escape", r"'\.\.'"),
    ((reg("a/../../escape", b"x"),), "a/../../escape", r"'\.\.'"),
    ((reg("/etc/abs", b"x"),), "/etc/abs", "absolute"),
    ((entry(CHRTYPE, "dev", devmajor=1, devminor=3),), "dev", "device or fifo"),
    ((entry(FIFOTYPE, "fifo"),), "fifo", "device or fifo"),
    ((entry(SYMTYPE, "s", "/"), reg("s/landed", b"x")), "s/landed", "through the symlink"),
    ((entry(SYMTYPE, "up", ".."), reg("up/x", b"x")), "up/x", "through the symlink"),
    ((reg("f", b"x"), reg("f/below", b"y")), "f/below", "through the file"),
    ((entry(LNKTYPE, "h", "etc/passwd"),), "h", "no such directory 'etc'"),
    ((entry(LNKTYPE, "h", "../../etc/passwd"),), "h", "hard link leading out"),
    ((entry(LNKTYPE, "h", "/etc/passwd"),), "h", "hard link leading out"),
    ((entry(SYMTYPE, "s", "/etc"), entry(LNKTYPE, "h", "s/passwd")), "h", "through the symlink"),
])
def test_hostile_entries_are_refused_naming_them(
        tmp_path: Path, places: tuple[Path, Path], entries: tuple[object, ...], named: str,
        why: str) -> None:
    target, sentinel = places
    path = write(tmp_path, gzip.compress(make_tar(*entries)))  # type: ignore[arg-type]
    with pytest.raises(ContextError, match=why) as raised:
        extract(path, target, "the context on standard input")
    assert repr(named) in raised.value.message
    assert raised.value.message.startswith("the context on standard input: ")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "landed").exists()
    untouched(sentinel)


@pytest.mark.parametrize("name", case_names())
def test_bad_tar_corpus_is_refused_or_stays_inside(tmp_path: Path, places: tuple[Path, Path],
                                                   name: str) -> None:
    """Whatever a case tries, the outcome is a ContextError or files inside the target
    only, with no device, fifo, or entry written through a link."""
    target, sentinel = places
    case = next(c for c in corpus(sentinel) if c.name == name)
    path = write(tmp_path, case.data)
    try:
        extract(path, target, "ctx")
    except ContextError as exc:
        assert exc.message.startswith("ctx")
    else:
        for _, dirs, files, fd in os.fwalk(target):  # fd-relative: paths may be too long
            for entry_name in (*dirs, *files):
                mode = os.lstat(entry_name, dir_fd=fd).st_mode
                assert stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode), entry_name
    untouched(sentinel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input", "sentinel", "target"]
