"""rootpath: every path resolves inside the root, whatever its symlinks and `..` say.

A sentinel directory *beside* the root stands for the host: symlinks in the root point at it
(absolutely and relatively) and nothing may ever reach it (docs/security.md rule 1, family B).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepbuild.fs import rootpath
from stepbuild.fs.rootpath import (
    MAX_SYMLINKS,
    makedirs_in_root,
    open_in_root,
    read_file_in_root,
    resolve_parent,
)
from tests.hostwatch import leaked_under, open_descriptors


def fd_path(fd: int) -> Path:
    return Path(os.readlink(f"/proc/self/fd/{fd}"))


class Tree:
    """tmp/root (the root) and tmp/sentinel (the "host") with escaping symlinks in the root."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.sentinel = base / "sentinel"
        self.sentinel.mkdir()
        (self.sentinel / "passwd").write_text("host\n")
        (self.sentinel / "sub").mkdir()
        r = self.root
        (r / "etc").mkdir(parents=True)
        (r / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
        (r / "usr" / "lib").mkdir(parents=True)
        (r / "usr" / "lib" / "libc.so").write_text("libc")
        (r / "lib").symlink_to("usr/lib")
        (r / "abs_etc").symlink_to("/etc")
        (r / "up").symlink_to("../../../..")
        (r / "up_sentinel").symlink_to("../sentinel")
        (r / "abs_sentinel").symlink_to(str(self.sentinel))
        (r / "chain1").symlink_to("chain2")
        (r / "chain2").symlink_to("/up/sentinel")
        (r / "loop").symlink_to("loop")
        (r / "dangling").symlink_to("/nowhere/new")
        (r / "file").write_text("f")
        self.snapshot = self._sentinel_state()

    def _sentinel_state(self) -> list[tuple[str, int, int]]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.sentinel):
            for name in sorted(dirnames + filenames):
                p = Path(dirpath) / name
                s = p.lstat()
                out.append((str(p), s.st_mode, s.st_mtime_ns))
        return sorted(out)

    def sentinel_untouched(self) -> bool:
        return self._sentinel_state() == self.snapshot and sorted(
            p.name for p in self.base.iterdir()
        ) == ["root", "sentinel"]


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    t = Tree(tmp_path)
    yield t
    assert t.sentinel_untouched()


@pytest.fixture
def root_fd(tree: Tree) -> Iterator[int]:
    fd = os.open(tree.root, os.O_RDONLY | os.O_DIRECTORY)
    before = open_descriptors()
    yield fd
    assert not (leaked := leaked_under(tree.base, before)), f"descriptors leaked: {leaked}"
    os.close(fd)


def read(fd: int) -> str:
    with open(fd, closefd=True) as f:
        return f.read()


# --- open_in_root --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("etc/passwd", "etc/passwd"),
        ("/etc/passwd", "etc/passwd"),
        ("../../etc/passwd", "etc/passwd"),
        ("/../../../etc/./passwd", "etc/passwd"),
        ("abs_etc/passwd", "etc/passwd"),
        ("lib/libc.so", "usr/lib/libc.so"),
        ("up/etc/passwd", "etc/passwd"),
        ("usr/lib/../../etc/passwd", "etc/passwd"),
        ("lib/../lib/libc.so", "usr/lib/libc.so"),  # `..` after a symlink: its target's parent
        ("lib/..", "usr"),
    ],
)
def test_open_resolves_inside(tree: Tree, root_fd: int, path: str, expected: str) -> None:
    fd = open_in_root(root_fd, path, os.O_RDONLY)
    assert fd_path(fd) == tree.root / expected
    os.close(fd)


@pytest.mark.parametrize(
    "path", ["up_sentinel/passwd", "abs_sentinel/passwd", "chain1/passwd", "up/sentinel/passwd"]
)
def test_links_to_the_host_stay_in_the_root(root_fd: int, path: str) -> None:
    with pytest.raises(FileNotFoundError):
        open_in_root(root_fd, path, os.O_RDONLY)


@pytest.mark.parametrize("path", ["abs_sentinel", "up_sentinel", "chain1"])
def test_creating_through_an_escaping_link_lands_in_the_root(
    tree: Tree, root_fd: int, path: str
) -> None:
    # abs_sentinel points at <base>/sentinel: re-anchored, that is <root>/<base>/sentinel
    target = "x"
    with pytest.raises(FileNotFoundError):
        open_in_root(root_fd, f"{path}/{target}", os.O_WRONLY | os.O_CREAT)
    parent, name = resolve_parent(root_fd, f"{path}/{target}", create=True)
    fd = os.open(name, os.O_WRONLY | os.O_CREAT, dir_fd=parent)
    assert tree.root in fd_path(fd).parents
    os.close(fd)
    os.close(parent)


def test_dangling_absolute_link_is_created_inside(tree: Tree, root_fd: int) -> None:
    with pytest.raises(FileNotFoundError):
        open_in_root(root_fd, "dangling", os.O_WRONLY | os.O_CREAT)  # /nowhere missing in root
    (tree.root / "nowhere").mkdir()
    os.close(open_in_root(root_fd, "dangling", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    assert (tree.root / "nowhere" / "new").is_file()
    assert not Path("/nowhere").exists()


def test_loop_gives_eloop(root_fd: int) -> None:
    with pytest.raises(OSError) as info:
        open_in_root(root_fd, "loop/x", os.O_RDONLY)
    assert info.value.errno == errno.ELOOP
    with pytest.raises(OSError) as info:
        open_in_root(root_fd, "loop", os.O_RDONLY)
    assert info.value.errno == errno.ELOOP


def test_symlink_limit_is_40(tree: Tree, root_fd: int) -> None:
    for i in range(MAX_SYMLINKS + 1):
        (tree.root / f"s{i}").symlink_to(f"s{i + 1}")
    (tree.root / f"s{MAX_SYMLINKS + 1}").write_text("end")
    assert read(open_in_root(root_fd, "s1", os.O_RDONLY)) == "end"  # exactly 40 links
    with pytest.raises(OSError) as info:
        open_in_root(root_fd, "s0", os.O_RDONLY)  # 41
    assert info.value.errno == errno.ELOOP


def test_follow_last_false(tree: Tree, root_fd: int) -> None:
    with pytest.raises(OSError) as info:
        open_in_root(root_fd, "abs_etc", os.O_RDONLY, follow_last=False)
    assert info.value.errno == errno.ELOOP
    fd = open_in_root(root_fd, "abs_etc", os.O_PATH, follow_last=False)
    assert stat.S_ISLNK(os.fstat(fd).st_mode)
    os.close(fd)


@pytest.mark.parametrize("path", ["/", "", ".", "..", "etc/..", "up", "abs_etc/.."])
def test_paths_naming_the_root_open_the_root(tree: Tree, root_fd: int, path: str) -> None:
    fd = open_in_root(root_fd, path, os.O_RDONLY | os.O_DIRECTORY)
    assert fd_path(fd) == tree.root
    os.close(fd)


def test_not_a_directory(root_fd: int) -> None:
    with pytest.raises(NotADirectoryError):
        open_in_root(root_fd, "file/x", os.O_RDONLY)
    with pytest.raises(NotADirectoryError):
        open_in_root(root_fd, "file/", os.O_RDONLY)


def test_nul_is_refused(root_fd: int) -> None:
    with pytest.raises(ValueError):
        open_in_root(root_fd, "etc\0/passwd", os.O_RDONLY)


# --- resolve_parent / makedirs_in_root ----------------------------------------------------


def test_resolve_parent_does_not_follow_the_last(tree: Tree, root_fd: int) -> None:
    parent, name = resolve_parent(root_fd, "etc/../abs_etc")
    assert (fd_path(parent), name) == (tree.root, "abs_etc")
    os.close(parent)
    parent, name = resolve_parent(root_fd, "abs_etc/passwd/")
    assert (fd_path(parent), name) == (tree.root / "etc", "passwd")
    os.close(parent)


@pytest.mark.parametrize("path", ["/", "", ".", "a/..", "a/.", "x\0y"])
def test_resolve_parent_refuses(root_fd: int, path: str) -> None:
    with pytest.raises(ValueError):
        resolve_parent(root_fd, path)


def test_resolve_parent_missing(root_fd: int) -> None:
    with pytest.raises(FileNotFoundError):
        resolve_parent(root_fd, "no/such/file")
    with pytest.raises(NotADirectoryError):
        resolve_parent(root_fd, "file/x/y")


def test_create_makes_exact_modes_and_owners(tree: Tree, root_fd: int) -> None:
    old = os.umask(0o077)
    try:
        parent, name = resolve_parent(
            root_fd, "/new/deeper/file", create=True, mode=0o2751, uid=1234, gid=5678
        )
    finally:
        os.umask(old)
    os.close(parent)
    assert name == "file"
    for d in (tree.root / "new", tree.root / "new" / "deeper"):
        s = d.stat()
        assert (stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid) == (0o2751, 1234, 5678)
    etc = (tree.root / "etc").stat()
    parent, _ = resolve_parent(root_fd, "etc/x", create=True, mode=0o700, uid=9)
    os.close(parent)
    assert (tree.root / "etc").stat() == etc  # existing dirs are left alone


def test_create_follows_links_within_the_root(tree: Tree, root_fd: int) -> None:
    fd = makedirs_in_root(root_fd, "abs_sentinel/made")
    assert fd_path(fd) == tree.root / str(tree.sentinel).lstrip("/") / "made"
    os.close(fd)
    fd = makedirs_in_root(root_fd, "up")
    assert fd_path(fd) == tree.root
    os.close(fd)


def test_on_nondir_replaces_what_it_says_and_follows_the_rest(tree: Tree, root_fd: int) -> None:
    seen: list[tuple[str, str | None]] = []

    def hide_all_but_lib(parent: int, name: str, target: str | None) -> bool:
        seen.append((name, target))
        return name != "lib"

    parent, name = resolve_parent(root_fd, "abs_etc/lib/new", create=True, mode=0o750,
                                  uid=7, gid=8, on_nondir=hide_all_but_lib)
    os.close(parent)
    assert seen == [("abs_etc", "/etc")] and name == "new"
    s = (tree.root / "abs_etc").lstat()  # the link became a new directory, made as asked
    assert stat.S_ISDIR(s.st_mode) and (stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid) == (
        0o750, 7, 8)
    assert (tree.root / "abs_etc" / "lib").is_dir() and (tree.root / "etc").is_dir()
    fd = makedirs_in_root(root_fd, "lib/x", on_nondir=hide_all_but_lib)  # lib: followed
    assert fd_path(fd) == tree.root / "usr" / "lib" / "x"
    os.close(fd)
    fd = makedirs_in_root(root_fd, "file/x", on_nondir=hide_all_but_lib)  # a file, too
    assert fd_path(fd) == tree.root / "file" / "x"
    os.close(fd)
    assert seen[-1] == ("file", None)


def test_on_nondir_without_create_finds_nothing_below(tree: Tree, root_fd: int) -> None:
    with pytest.raises(FileNotFoundError):
        resolve_parent(root_fd, "lib/libc.so", on_nondir=lambda *_: True)
    assert (tree.root / "lib").is_symlink()  # a lookup changes nothing


def test_on_nondir_may_stop_the_walk(tree: Tree, root_fd: int) -> None:
    def refuse(parent: int, name: str, target: str | None) -> bool:
        raise PermissionError(name)

    with pytest.raises(PermissionError, match="dangling"):
        resolve_parent(root_fd, "dangling/x", create=True, on_nondir=refuse)
    assert not (tree.root / "nowhere").exists()
    with pytest.raises(NotADirectoryError):  # False for a non-link: as without a rule
        resolve_parent(root_fd, "file/x", create=True, on_nondir=lambda *_: False)


def test_dotdot_checks_it_returns_where_it_came_from(tree: Tree, root_fd: int) -> None:
    (tree.root / "a" / "b").mkdir(parents=True)
    walk = rootpath._Walker(root_fd, "a/b/..")
    try:
        for name in ("a", "b"):
            walk.push(os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=walk.fd))
        # a concurrent rename moves b out of a (here: out of the root altogether)
        os.rename(tree.root / "a" / "b", tree.base / "moved")
        with pytest.raises(OSError) as info:
            walk.up()
        assert info.value.errno == errno.EAGAIN
    finally:
        walk.close()
        os.rename(tree.base / "moved", tree.root / "a" / "b")


def test_depth_is_bounded(tree: Tree, root_fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rootpath, "MAX_DEPTH", 5)
    fd = makedirs_in_root(root_fd, "1/2/3/4/5")
    os.close(fd)
    with pytest.raises(OSError) as info:
        makedirs_in_root(root_fd, "1/2/3/4/5/6")
    assert info.value.errno == errno.ENAMETOOLONG


# --- read_file_in_root --------------------------------------------------------------------


def test_read_file_in_root(tree: Tree) -> None:
    (tree.root / "etc" / "group").symlink_to("/usr/../etc/passwd")
    assert read_file_in_root(tree.root, "/etc/group").startswith(b"root:")
    (tree.root / "etc" / "shadow").symlink_to(str(tree.sentinel / "passwd"))
    with pytest.raises(FileNotFoundError):
        read_file_in_root(tree.root, "/etc/shadow")


def test_read_file_refuses_fifos_dirs_and_big_files(tree: Tree) -> None:
    os.mkfifo(tree.root / "fifo")
    with pytest.raises(ValueError):
        read_file_in_root(tree.root, "fifo")  # must not block
    with pytest.raises((ValueError, IsADirectoryError)):
        read_file_in_root(tree.root, "etc")
    (tree.root / "big").write_bytes(b"x" * 101)
    with pytest.raises(ValueError):
        read_file_in_root(tree.root, "big", limit=100)
    assert read_file_in_root(tree.root, "big", limit=101) == b"x" * 101


# --- property: nothing resolves outside the root -------------------------------------------

COMPONENTS = st.sampled_from(
    [
        "..",
        ".",
        "",
        "etc",
        "usr",
        "lib",
        "up",
        "up_sentinel",
        "abs_sentinel",
        "abs_etc",
        "chain1",
        "chain2",
        "sentinel",
        "sub",
        "passwd",
        "x",
        "loop",
        "file",
        "dangling",
    ]
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    parts=st.lists(COMPONENTS, min_size=1, max_size=8), absolute=st.booleans(), create=st.booleans()
)
def test_property_contained(tree: Tree, parts: list[str], absolute: bool, create: bool) -> None:
    path = ("/" if absolute else "") + "/".join(parts)
    root_fd = os.open(tree.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            if create:
                parent, name = resolve_parent(root_fd, path, create=True)
                try:
                    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, dir_fd=parent)
                finally:
                    os.close(parent)
            else:
                fd = open_in_root(root_fd, path, os.O_RDONLY)
        except (OSError, ValueError):
            return
        try:
            where = fd_path(fd)
            assert where == tree.root or tree.root in where.parents
        finally:
            os.close(fd)
    finally:
        os.close(root_fd)
    assert tree.sentinel_untouched()
