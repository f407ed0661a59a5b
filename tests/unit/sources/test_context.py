"""The build context (stepbuild/sources/context.py): selection, ignore rules, digests, stat cache.

pyfakefs for pure selection logic; tmp_path where the real kernel matters (symlink escapes,
fifos, sockets, the stat cache's ctime check). docs/security.md family H: every escape test also
checks that a sentinel file beside the context was not read.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest
import xxhash

from stepbuild.errors import ContextError, StepbuildError
from stepbuild.sources import context
from stepbuild.sources.context import (
    BuildContext,
    ContextEntry,
    Selection,
    SourceGroup,
    hash_file,
)
from stepbuild.sources.patterns import read_ignore_file
from tests.fifos import promptly, release


class Link(str):
    """A symlink in a tree spec: the value is its target."""


def make_tree(root: Path, spec: dict[str, str | bytes | Link | None]) -> Path:
    """Create files (str/bytes content), directories (key ending in "/", value None) and
    symlinks (Link) under root."""
    for rel, value in spec.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(value, Link):
            path.symlink_to(str(value))
        elif value is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.write_bytes(value.encode() if isinstance(value, str) else value)
    return root


def xxh(data: str) -> str:
    return xxhash.xxh3_128(data.encode()).hexdigest()


def paths(selection: Selection) -> list[tuple[str, list[str]]]:
    return [(g.source_path, [e.path for e in g.entries]) for g in selection.groups]


TREE: dict[str, str | bytes | Link | None] = {
    "Dockerfile": "FROM scratch\n",
    "a.txt": "alpha",
    "b.txt": "bravo",
    "c.md": "charlie",
    "dir/x": "x in dir",
    "dir/sub/y.txt": "y",
    "dir/sub/z/x": "deep x",
    "dir/other/x": "other x",
    "empty/": None,
}


@pytest.fixture
def ctx_dir(tmp_path: Path) -> Path:
    root = make_tree(tmp_path / "ctx", TREE)
    (tmp_path / "sentinel").write_text("outside the context")
    return root


@pytest.fixture
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the stat cache remember files created a moment ago (tests cannot wait 2 s)."""
    monkeypatch.setattr(context, "RACY_WINDOW_NS", -(10**18))


# --- selection ---------------------------------------------------------------------------------


def test_file_source(ctx_dir: Path) -> None:
    sel = BuildContext(ctx_dir).select(["a.txt"])
    (group,) = sel.groups
    assert (group.source_path, group.resolved, group.is_dir, group.name) == (
        "a.txt", "a.txt", False, "a.txt")
    (entry,) = group.entries
    assert (entry.path, entry.kind, entry.size, entry.content_hash, entry.link_target) == (
        "a.txt", "file", 5, xxh("alpha"), None)
    assert entry.mode == stat.S_IMODE((ctx_dir / "a.txt").stat().st_mode)


def test_dir_source_is_copied_by_its_contents(ctx_dir: Path) -> None:
    (group,) = BuildContext(ctx_dir).select(["dir"]).groups
    assert group.is_dir and group.source_path == "dir"
    assert [e.path for e in group.entries] == [
        "other", "other/x", "sub", "sub/y.txt", "sub/z", "sub/z/x", "x"]
    kinds = {e.path: e.kind for e in group.entries}
    assert kinds["sub"] == "dir" and kinds["sub/z/x"] == "file"
    assert all(e.content_hash is None and e.size == 0 for e in group.entries if e.kind == "dir")
    assert group.mode == stat.S_IMODE((ctx_dir / "dir").stat().st_mode)


@pytest.mark.parametrize("source", [".", "/", "./", "dir/..", "/dir/../"])
def test_root_sources(ctx_dir: Path, source: str) -> None:
    (group,) = BuildContext(ctx_dir).select([source]).groups
    assert group.source_path == "." and group.is_dir
    names = [e.path for e in group.entries]
    assert "Dockerfile" in names and "dir/sub/z/x" in names and "empty" in names


@pytest.mark.parametrize(("source", "expected"), [
    ("*.txt", [("a.txt", ["a.txt"]), ("b.txt", ["b.txt"])]),
    ("[ab]*", [("a.txt", ["a.txt"]), ("b.txt", ["b.txt"])]),
    ("dir/*/x", [("dir/other/x", ["x"])]),
    ("dir/*/*/x", [("dir/sub/z/x", ["x"])]),
    ("/dir/s?b", [("dir/sub", ["y.txt", "z", "z/x"])]),  # a matched dir: its contents
    ("d*", [("dir", ["other", "other/x", "sub", "sub/y.txt", "sub/z", "sub/z/x", "x"])]),
    # Go has no "!" negation: [!a] is the class {"!", "a"}, so a.txt matches, b.txt not
    ("[!a].txt", [("a.txt", ["a.txt"])]),
])
def test_wildcards(ctx_dir: Path, source: str, expected: list[tuple[str, list[str]]]) -> None:
    assert paths(BuildContext(ctx_dir).select([source])) == expected


def test_several_sources_keep_their_order(ctx_dir: Path) -> None:
    sel = BuildContext(ctx_dir).select(["c.md", "*.txt", "dir/x"])
    assert [g.source_path for g in sel.groups] == ["c.md", "a.txt", "b.txt", "dir/x"]


def test_missing_literal_source_is_an_error(ctx_dir: Path) -> None:
    with pytest.raises(ContextError, match="COPY source not found: nope.txt") as info:
        BuildContext(ctx_dir).select(["nope.txt"])
    assert info.value.hint and info.value.exit_code == 1
    assert isinstance(info.value, StepbuildError)


def test_wildcard_matching_nothing_is_empty_as_in_buildkit(ctx_dir: Path) -> None:
    # AllowEmptyWildcard: `COPY requirements.* .` works without the file (moby/moby#26332)
    assert BuildContext(ctx_dir).select(["*.nothing", "a.txt"]).groups[0].source_path == "a.txt"
    assert BuildContext(ctx_dir).select(["*.nothing"]).groups == ()


def test_wildcard_under_a_missing_directory_is_an_error(ctx_dir: Path) -> None:
    with pytest.raises(ContextError, match="not found"):
        BuildContext(ctx_dir).select(["missing/*.txt"])


def test_malformed_wildcard_is_an_error(ctx_dir: Path) -> None:
    with pytest.raises(ContextError, match="bad wildcard"):
        BuildContext(ctx_dir).select(["a[.txt"])


def test_file_used_as_a_directory_is_not_found(ctx_dir: Path) -> None:
    with pytest.raises(ContextError, match="not found"):
        BuildContext(ctx_dir).select(["a.txt/x"])


@pytest.mark.parametrize("source", ["..", "../sentinel", "dir/../../sentinel", "/../sentinel",
                                    "dir/../..", "../ctx/a.txt"])
def test_dotdot_out_of_the_context_is_refused(ctx_dir: Path, source: str) -> None:
    with pytest.raises(ContextError, match="outside the build context"):
        BuildContext(ctx_dir).select([source])


def test_context_root_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ContextError):
        BuildContext(tmp_path / "f")
    with pytest.raises(ContextError):
        BuildContext(tmp_path / "missing")


# --- symlinks (docs/security.md family H) ---------------------------------------------------------


@pytest.fixture
def sentinel_reads(monkeypatch: pytest.MonkeyPatch, ctx_dir: Path) -> list[str]:
    """Names of files hashed; a test asserts the sentinel beside the context is not among them."""
    seen: list[str] = []
    real = context.hash_file

    def spy(dir_fd: int, name: str, info: os.stat_result, shown: str) -> str:
        seen.append(shown)
        assert info.st_ino != (ctx_dir.parent / "sentinel").stat().st_ino
        return real(dir_fd, name, info, shown)

    monkeypatch.setattr(context, "hash_file", spy)
    return seen


@pytest.mark.parametrize("target", [
    "/etc/passwd",  # absolute: outside
    "../sentinel",  # relative, one level out
    "dir/../../sentinel",  # through a real dir, then out
    "dir/sub/../../../sentinel",
])
def test_top_level_symlink_out_of_the_context_is_refused(
        ctx_dir: Path, sentinel_reads: list[str], target: str) -> None:
    (ctx_dir / "link").symlink_to(target)
    with pytest.raises(ContextError, match="leads outside the build context"):
        BuildContext(ctx_dir).select(["link"])
    assert sentinel_reads == []


def test_absolute_symlink_into_the_context_is_still_refused(ctx_dir: Path) -> None:
    # BuildKit would re-anchor "/<ctx>/a.txt" at the context root (<ctx>/<ctx>/a.txt);
    # the host would read <ctx>/a.txt. They disagree, so we refuse.
    (ctx_dir / "link").symlink_to(ctx_dir / "a.txt")
    with pytest.raises(ContextError, match="absolute"):
        BuildContext(ctx_dir).select(["link"])


def test_symlink_chain_leading_out_is_refused(ctx_dir: Path, sentinel_reads: list[str]) -> None:
    (ctx_dir / "l1").symlink_to("l2")
    (ctx_dir / "l2").symlink_to("dir/l3")
    (ctx_dir / "dir" / "l3").symlink_to("../../sentinel")
    with pytest.raises(ContextError, match="outside"):
        BuildContext(ctx_dir).select(["l1"])
    assert sentinel_reads == []


def test_symlink_loop_is_refused(ctx_dir: Path) -> None:
    (ctx_dir / "loop1").symlink_to("loop2")
    (ctx_dir / "loop2").symlink_to("loop1")
    with pytest.raises(ContextError, match="too many levels"):
        BuildContext(ctx_dir).select(["loop1"])


def test_intermediate_symlink_out_of_the_context_is_refused(ctx_dir: Path) -> None:
    (ctx_dir / "up").symlink_to("..")
    with pytest.raises(ContextError, match="outside"):
        BuildContext(ctx_dir).select(["up/sentinel"])


def test_top_level_symlink_inside_the_context_is_followed(ctx_dir: Path) -> None:
    (ctx_dir / "link").symlink_to("dir/sub/y.txt")
    (group,) = BuildContext(ctx_dir).select(["link"]).groups
    assert (group.source_path, group.resolved, group.source, group.name) == (
        "link", "dir/sub/y.txt", "dir/sub/y.txt", "link")
    (entry,) = group.entries
    assert (entry.path, entry.kind, entry.content_hash) == ("link", "file", xxh("y"))


def test_top_level_symlink_to_a_directory_copies_its_contents(ctx_dir: Path) -> None:
    (ctx_dir / "dlink").symlink_to("dir/sub")
    (ctx_dir / "dir" / "back").symlink_to("../dlink")  # a link inside dir: never followed
    (group,) = BuildContext(ctx_dir).select(["dlink"]).groups
    assert group.is_dir and group.resolved == "dir/sub"
    assert [e.path for e in group.entries] == ["y.txt", "z", "z/x"]


def test_symlinks_on_the_way_are_followed(ctx_dir: Path) -> None:
    (ctx_dir / "dlink").symlink_to("dir")
    (group,) = BuildContext(ctx_dir).select(["dlink/sub/y.txt"]).groups
    assert group.resolved == "dir/sub/y.txt" and group.entries[0].path == "y.txt"


def test_top_level_symlink_kept_when_not_following(ctx_dir: Path) -> None:
    (ctx_dir / "link").symlink_to("/etc/passwd")
    (group,) = BuildContext(ctx_dir).select(["link"], follow_top_symlink=False).groups
    (entry,) = group.entries
    assert (entry.kind, entry.link_target, entry.content_hash) == ("symlink", "/etc/passwd", None)


def test_symlink_inside_a_copied_dir_is_kept_as_a_link(
        ctx_dir: Path, sentinel_reads: list[str]) -> None:
    (ctx_dir / "dir" / "abs").symlink_to("/etc/passwd")
    (ctx_dir / "dir" / "out").symlink_to("../../sentinel")
    (ctx_dir / "dir" / "ddir").symlink_to("/")
    bc = BuildContext(ctx_dir)
    entries = {e.path: e for e in bc.select(["dir"]).groups[0].entries}
    assert entries["abs"].kind == "symlink" and entries["abs"].link_target == "/etc/passwd"
    assert entries["out"].link_target == "../../sentinel"
    assert entries["abs"].size == len("/etc/passwd") and entries["abs"].content_hash is None
    assert not any(p.startswith("ddir/") for p in entries)  # never walked into
    assert all("sentinel" not in shown for shown in sentinel_reads)
    before = bc.select(["dir"]).digest()
    (ctx_dir / "dir" / "abs").unlink()
    (ctx_dir / "dir" / "abs").symlink_to("/etc/shadow")
    assert bc.select(["dir"]).digest() != before  # the link target is part of the digest


@pytest.fixture
def opened_dirs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Context paths of the directories a walk lists."""
    opened: list[str] = []
    real = context._Selector._frame

    def spy(fd: int, ctx_path: str, *args: object, **kwargs: object) -> context._Frame:
        opened.append(ctx_path)
        return real(fd, ctx_path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(context._Selector, "_frame", staticmethod(spy))
    return opened


def test_wildcard_walk_goes_no_deeper_than_the_pattern(ctx_dir: Path,
                                                      opened_dirs: list[str]) -> None:
    BuildContext(ctx_dir).select(["*.txt"])
    assert opened_dirs == ["."]
    opened_dirs.clear()
    BuildContext(ctx_dir).select(["dir/*/x"])
    assert opened_dirs == ["dir", "dir/other", "dir/sub"]  # not dir/sub/z


def test_wildcard_does_not_descend_into_symlinked_dirs(ctx_dir: Path) -> None:
    (ctx_dir / "dlink").symlink_to("dir")
    matched = [g.source_path for g in BuildContext(ctx_dir).select(["*/x"]).groups]
    assert matched == ["dir/x"]  # not dlink/x: the walk does not follow links


def test_wildcard_match_that_is_a_symlink_is_followed(ctx_dir: Path) -> None:
    (ctx_dir / "link.txt").symlink_to("c.md")
    groups = BuildContext(ctx_dir).select(["l*.txt"]).groups
    assert [(g.source_path, g.resolved, g.entries[0].content_hash) for g in groups] == [
        ("link.txt", "c.md", xxh("charlie"))]


def test_open_file_refuses_symlinks(ctx_dir: Path) -> None:
    (ctx_dir / "link").symlink_to("a.txt")
    (ctx_dir / "dlink").symlink_to("dir")
    bc = BuildContext(ctx_dir)
    fd = bc.open_file("dir/sub/y.txt")
    try:
        assert os.read(fd, 10) == b"y"
    finally:
        os.close(fd)
    for path in ("link", "dlink/x"):
        with pytest.raises(OSError):
            bc.open_file(path)
    with pytest.raises(ContextError):
        bc.open_file("dir")
    with pytest.raises(ContextError):
        bc.open_file("../sentinel")


# --- special files -----------------------------------------------------------------------------


def test_fifo_in_a_copied_dir_is_refused_without_hanging(ctx_dir: Path) -> None:
    os.mkfifo(ctx_dir / "dir" / "pipe")
    with pytest.raises(ContextError, match="fifo: dir/pipe"):
        BuildContext(ctx_dir).select(["dir"])


def test_fifo_source_is_refused(ctx_dir: Path) -> None:
    os.mkfifo(ctx_dir / "pipe")
    with pytest.raises(ContextError, match="fifo"):
        BuildContext(ctx_dir).select(["pipe"])


def test_ignored_or_excluded_fifo_is_fine(ctx_dir: Path) -> None:
    os.mkfifo(ctx_dir / "dir" / "pipe")
    assert BuildContext(ctx_dir, ignore=["dir/pipe"]).select(["dir"]).groups
    assert BuildContext(ctx_dir).select(["dir"], excludes=["pipe"]).groups


def test_socket_is_refused(ctx_dir: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(ctx_dir / "dir" / "sock"))
        with pytest.raises(ContextError, match="socket"):
            BuildContext(ctx_dir).select(["."])


def test_device_is_refused(ctx_dir: Path) -> None:
    # The suite runs as root (make test): without CAP_MKNOD this fails rather than skips.
    os.mknod(ctx_dir / "dir" / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    with pytest.raises(ContextError, match="dev"):
        BuildContext(ctx_dir).select(["dir/*"])


def test_file_changed_while_read_is_an_error(ctx_dir: Path) -> None:
    stale = os.lstat(ctx_dir / "a.txt")
    (ctx_dir / "a.txt").write_text("grown since the lstat")
    fd = os.open(ctx_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ContextError, match="changed"):
            hash_file(fd, "a.txt", stale, "a.txt")
        with pytest.raises(ContextError, match="changed"):  # another inode under the name
            hash_file(fd, "b.txt", stale, "b.txt")
    finally:
        os.close(fd)


def test_a_fifo_swapped_in_after_the_walk_is_refused_without_hanging(ctx_dir: Path) -> None:
    # The walk's lstat saw a regular file; a FIFO put under its name before the file is
    # hashed or opened for COPY must fail at once (O_NONBLOCK, then fstat), not wait for a
    # writer. Run in a thread with a timeout so that a regression fails instead of hanging.

    stale = os.lstat(ctx_dir / "a.txt")
    (ctx_dir / "a.txt").unlink()
    os.mkfifo(ctx_dir / "a.txt")
    fd = os.open(ctx_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ContextError, match="changed"):
            promptly(lambda: hash_file(fd, "a.txt", stale, "a.txt"))
        with pytest.raises(ContextError, match="not a regular file"):
            promptly(lambda: BuildContext(ctx_dir).open_file("a.txt"))
    finally:
        os.close(fd)
        release(ctx_dir / "a.txt")  # let go of a reader a regression left blocked


# --- .dockerignore and --exclude ------------------------------------------------------------


IGNORED_TREE: dict[str, str | bytes | Link | None] = {
    "app.py": "print()",
    "debug.log": "noise",
    "keep.log": "kept",
    "src/trace.log": "noise",
    "src/main.py": "main",
    "build/out.o": "obj",
    "src/build/gen.py": "generated but not top-level build",
    "node_modules/pkg/index.js": "js",
    "web/node_modules/x.js": "nested node_modules is not ignored",
}
IGNORE = read_ignore_file("# brief's example\n**/*.log\n!keep.log\n/build\nnode_modules/\n")


def test_ignore_patterns(tmp_path: Path) -> None:
    root = make_tree(tmp_path, IGNORED_TREE)
    (group,) = BuildContext(root, ignore=IGNORE).select(["."]).groups
    assert [e.path for e in group.entries] == [
        "app.py", "keep.log", "src", "src/build", "src/build/gen.py", "src/main.py",
        "web", "web/node_modules", "web/node_modules/x.js"]


def test_ignored_source_is_not_found(tmp_path: Path) -> None:
    root = make_tree(tmp_path, IGNORED_TREE)
    bc = BuildContext(root, ignore=IGNORE)
    for source in ("debug.log", "build", "build/out.o", "node_modules/pkg"):
        with pytest.raises(ContextError, match="not found") as info:
            bc.select([source])
        assert info.value.hint and ".dockerignore" in info.value.hint
    assert bc.select(["*.log"]).groups[0].source_path == "keep.log"


def test_ignored_dirs_are_not_walked(tmp_path: Path, opened_dirs: list[str]) -> None:
    root = make_tree(tmp_path, IGNORED_TREE)
    os.mkfifo(root / "node_modules" / "pipe")  # would be refused if it were walked
    BuildContext(root, ignore=IGNORE).select(["."])
    assert "node_modules" not in opened_dirs and "build" not in opened_dirs
    assert "src/build" in opened_dirs


def test_ignored_dir_with_nothing_reincluded_is_gone(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {"build/drop.txt": "d", "src/a": "a"})
    bc = BuildContext(root, ignore=["build", "!build/keep.txt"])
    assert [e.path for e in bc.select(["."]).groups[0].entries] == ["src", "src/a"]
    with pytest.raises(ContextError, match="not found"):
        bc.select(["build"])
    assert [g.source_path for g in bc.select(["*"]).groups] == ["src"]


def test_exception_inside_an_ignored_dir(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {"build/keep.txt": "k", "build/drop.txt": "d",
                                "build/sub/drop": "d", "other/x": "x"})
    ignore = ["build", "!build/keep.txt"]
    (group,) = BuildContext(root, ignore=ignore).select(["."]).groups
    assert [e.path for e in group.entries] == ["build", "build/keep.txt", "other", "other/x"]
    (group,) = BuildContext(root, ignore=ignore).select(["build"]).groups
    assert [e.path for e in group.entries] == ["keep.txt"]


def test_wildcard_exception_keeps_deep_files(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {"a/b/keep": "1", "a/b/drop": "2", "a/c/drop": "3", "top": "4"})
    (group,) = BuildContext(root, ignore=["*", "!**/keep"]).select(["."]).groups
    assert [e.path for e in group.entries] == ["a", "a/b", "a/b/keep"]


def test_excludes(ctx_dir: Path) -> None:
    bc = BuildContext(ctx_dir)
    (group,) = bc.select(["dir"], excludes=["*.txt", "other"]).groups
    assert [e.path for e in group.entries] == ["sub", "sub/y.txt", "sub/z", "sub/z/x", "x"]
    (group,) = bc.select(["dir"], excludes=["**/*.txt", "sub/z"]).groups
    assert [e.path for e in group.entries] == ["other", "other/x", "sub", "x"]
    (group,) = bc.select(["dir"], excludes=["sub", "!sub/z/x"]).groups
    assert [e.path for e in group.entries] == ["other", "other/x", "sub", "sub/z", "sub/z/x", "x"]


def test_excludes_filter_wildcard_matches(ctx_dir: Path) -> None:
    # The reference's example: COPY --exclude=*.txt hom* /mydir/
    groups = BuildContext(ctx_dir).select(["*"], excludes=["*.txt", "dir"]).groups
    assert [g.source_path for g in groups] == ["Dockerfile", "c.md", "empty"]


def test_bad_patterns_are_context_errors(ctx_dir: Path) -> None:
    with pytest.raises(ContextError, match=".dockerignore"):
        BuildContext(ctx_dir, ignore=["!"])
    with pytest.raises(ContextError, match="--exclude"):
        BuildContext(ctx_dir).select(["."], excludes=["a[-]"])


# --- the digest --------------------------------------------------------------------------------


def test_ignored_and_excluded_changes_never_change_the_digest(tmp_path: Path) -> None:
    root = make_tree(tmp_path, IGNORED_TREE)
    bc = BuildContext(root, ignore=IGNORE)
    before = bc.select(["."], excludes=["web"]).digest()
    (root / "debug.log").write_text("more noise")
    (root / "build" / "new.o").write_text("new")
    (root / "node_modules" / "pkg" / "index.js").unlink()
    (root / "web" / "node_modules" / "x.js").write_text("excluded by --exclude")
    os.chmod(root / "src" / "trace.log", 0o600)
    assert bc.select(["."], excludes=["web"]).digest() == before


def test_touch_never_changes_the_digest(ctx_dir: Path) -> None:
    bc = BuildContext(ctx_dir)
    before = bc.select(["."]).digest()
    for path in (ctx_dir / "a.txt", ctx_dir / "dir", ctx_dir / "dir" / "sub" / "z" / "x"):
        os.utime(path, ns=(1, 1_000_000_000))
    after = bc.select(["."])
    assert after.digest() == before
    assert {e.mtime_ns for e in after.groups[0].entries if e.path == "a.txt"} == {1_000_000_000}


def test_content_change_and_chmod_change_the_digest(ctx_dir: Path) -> None:
    bc = BuildContext(ctx_dir)
    digests = {bc.select(["."]).digest()}
    (ctx_dir / "dir" / "sub" / "y.txt").write_text("Y")  # same size, new content
    digests.add(bc.select(["."]).digest())
    os.chmod(ctx_dir / "a.txt", 0o755)
    digests.add(bc.select(["."]).digest())
    os.chmod(ctx_dir / "dir", 0o700)
    digests.add(bc.select(["."]).digest())
    (ctx_dir / "empty" / "new").mkdir()
    digests.add(bc.select(["."]).digest())
    (ctx_dir / "a.txt").rename(ctx_dir / "a2.txt")
    digests.add(bc.select(["."]).digest())
    assert len(digests) == 6


def test_source_dir_mode_is_in_the_digest(ctx_dir: Path) -> None:
    bc = BuildContext(ctx_dir)
    before = bc.select(["dir"]).digest()
    os.chmod(ctx_dir / "dir", 0o711)
    assert bc.select(["dir"]).digest() != before


@pytest.mark.root  # chown
def test_owner_never_changes_the_digest(ctx_dir: Path) -> None:
    bc = BuildContext(ctx_dir)
    before = bc.select(["."])
    os.chown(ctx_dir / "a.txt", 1234, 5678)
    after = bc.select(["."])
    assert after.digest() == before.digest()
    entry = next(e for e in after.groups[0].entries if e.path == "a.txt")
    assert (entry.uid, entry.gid) == (1234, 5678)  # still recorded, for the copy


def _entry(path: str = "a", **changes: object) -> ContextEntry:
    fields: dict[str, object] = dict(path=path, kind="file", mode=0o644, size=3,
                                     link_target=None, content_hash="0" * 32, uid=0, gid=0,
                                     mtime_ns=0)
    fields.update(changes)
    return ContextEntry(**fields)  # type: ignore[arg-type]


def _selection(*entries: ContextEntry, source: str = "src") -> Selection:
    return Selection((SourceGroup(source, source, True, 0o755, entries),))


def test_digest_is_pinned() -> None:
    # Changing the serialisation must change DIGEST_PREFIX; this value then changes too.
    sel = _selection(_entry("b"), _entry("a/link", kind="symlink", link_target="../b",
                                         content_hash=None, mode=0o777, size=4))
    fields = [b"src", b"d", b"755", b"2",  # group: source, dir, mode (octal), entry count
              b"a/link", b"symlink", b"777", b"4", b"../b", b"",  # entries sorted by path
              b"b", b"file", b"644", b"3", b"", b"0" * 32]
    serialised = b"stepbuild-context-selection\x00v1\x00" + b"".join(f + b"\x00" for f in fields)
    assert sel.digest() == xxhash.xxh3_128(serialised).hexdigest()
    assert sel.digest() == "980b04612fa6e2a98e6542a279072f33"


def test_digest_ignores_order_of_entries_uid_gid_mtime() -> None:
    a, b = _entry("a"), _entry("b")
    base = _selection(a, b).digest()
    assert _selection(b, a).digest() == base
    assert _selection(_entry("a", uid=7, gid=8, mtime_ns=99), b).digest() == base


@pytest.mark.parametrize("change", [
    {"path": "c"}, {"kind": "dir"}, {"mode": 0o600}, {"size": 4},
    {"content_hash": "1" * 32}, {"link_target": "x"},
])
def test_digest_covers_each_field(change: dict[str, object]) -> None:
    assert _selection(_entry(**change)).digest() != _selection(_entry()).digest()


def test_digest_covers_groups() -> None:
    a = _entry("a")
    base = _selection(a).digest()
    assert _selection(a, source="other").digest() != base
    two = Selection((SourceGroup("x", "x", False, 0o644, (a,)),
                     SourceGroup("y", "y", False, 0o644, (a,))))
    swapped = Selection(tuple(reversed(two.groups)))
    assert two.digest() != swapped.digest()  # later sources overwrite earlier ones
    assert Selection(()).digest() != base


def test_digest_fields_cannot_run_together() -> None:
    # "ab" + "" vs "a" + "b": NUL-terminated fields keep them apart.
    one = _selection(_entry("ab", link_target=""))
    other = _selection(_entry("a", link_target="b"))
    assert one.digest() != other.digest()


# --- the stat cache ----------------------------------------------------------------------------


@pytest.fixture
def read_counter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    real = context.hash_file

    def counting(dir_fd: int, name: str, info: os.stat_result, shown: str) -> str:
        reads.append(shown)
        return real(dir_fd, name, info, shown)

    monkeypatch.setattr(context, "hash_file", counting)
    return reads


@pytest.mark.usefixtures("no_racy_window")
def test_stat_cache_avoids_rereading(ctx_dir: Path, tmp_path: Path,
                                     read_counter: list[str]) -> None:
    cache = tmp_path / "state" / "stat-cache.json"
    first = BuildContext(ctx_dir, stat_cache=cache)
    digest = first.select(["."]).digest()
    first.save()
    assert len(read_counter) == 8 and first.stats.misses == 8
    read_counter.clear()
    second = BuildContext(ctx_dir, stat_cache=cache)
    assert second.select(["."]).digest() == digest
    assert read_counter == [] and (second.stats.hits, second.stats.misses) == (8, 0)
    (ctx_dir / "dir" / "x").write_text("changed")
    third = BuildContext(ctx_dir, stat_cache=cache)
    assert third.select(["."]).digest() != digest
    assert read_counter == ["dir/x"]


@pytest.mark.usefixtures("no_racy_window")
def test_stat_cache_hit_does_not_read_the_file(ctx_dir: Path, tmp_path: Path) -> None:
    # Proof without a spy: the cached hash is used even though the bytes on disk now differ
    # (we swap the content under an unchanged stat by editing the cache's record instead).
    cache = tmp_path / "stat-cache.json"
    bc = BuildContext(ctx_dir, stat_cache=cache)
    bc.select(["a.txt"])
    bc.save()
    doc = json.loads(cache.read_text())
    for record in doc["entries"]:
        record[5] = "f" * 32
    cache.write_text(json.dumps(doc))
    (entry,) = BuildContext(ctx_dir, stat_cache=cache).select(["a.txt"]).groups[0].entries
    assert entry.content_hash == "f" * 32


def test_recently_changed_files_are_not_remembered(ctx_dir: Path, tmp_path: Path,
                                                  read_counter: list[str]) -> None:
    # Files created a moment ago fall in the racy window: hashed every time until they settle.
    cache = tmp_path / "stat-cache.json"
    for _ in range(2):
        bc = BuildContext(ctx_dir, stat_cache=cache)
        bc.select(["a.txt"])
        bc.save()
    assert read_counter == ["a.txt", "a.txt"]


@pytest.mark.usefixtures("no_racy_window")
@pytest.mark.parametrize("garbage", [
    b"", b"\x00\xff not json", b"[]", b"[" * 100_000, b'{"entries": 1}',
    b'{"format": "other", "version": 1, "entries": []}',
    b'{"format": "stepbuild-stat-cache", "version": 1, "entries": [[1, 2, 3]]}',
    b'{"format": "stepbuild-stat-cache", "version": 1, "entries": [[1,2,3,4,5,"short"]]}',
    b'{"format": "stepbuild-stat-cache", "version": 1, "entries": [[1,2,3,4,"5","' +
    b"0" * 32 + b'"]]}',
    b'{"format": "stepbuild-stat-cache", "version": 99, "entries": []}',
])
def test_corrupt_stat_cache_is_ignored_and_rebuilt(ctx_dir: Path, tmp_path: Path,
                                                   garbage: bytes) -> None:
    cache = tmp_path / "stat-cache.json"
    cache.write_bytes(garbage)
    bc = BuildContext(ctx_dir, stat_cache=cache)
    assert bc.select(["."]).digest() == BuildContext(ctx_dir).select(["."]).digest()
    bc.save()
    doc = json.loads(cache.read_bytes())
    assert doc["format"] == "stepbuild-stat-cache" and len(doc["entries"]) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx", "sentinel", "stat-cache.json"]


def test_save_without_changes_does_not_write(ctx_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "stat-cache.json"
    BuildContext(ctx_dir, stat_cache=cache).save()
    assert not cache.exists()
    BuildContext(ctx_dir).save()  # no stat cache at all: nothing to do


# --- pyfakefs: pure selection logic -----------------------------------------------------------


def test_selection_on_a_fake_filesystem(fs: object) -> None:
    make_tree(Path("/ctx"), {"a.txt": "alpha", "dir/sub/y.txt": "y", "dir/link": Link("sub"),
                             "dir/z.md": "z", "skip/x": "x"})
    bc = BuildContext("/ctx", ignore=["skip"])
    sel = bc.select(["*.txt", "dir"], excludes=["*.md"])
    assert paths(sel) == [("a.txt", ["a.txt"]), ("dir", ["link", "sub", "sub/y.txt"])]
    assert sel.groups[0].entries[0].content_hash == xxh("alpha")
    with pytest.raises(ContextError):
        bc.select(["skip/x"])
    with pytest.raises(ContextError):
        bc.select(["../etc"])
