"""The Copier's owners and modes (issue 11 items 2 and 6), on plain directories as image root.

Item 2: without --chown a `COPY --from` keeps each entry's uid/gid (files, directories of the
tree, symlinks); the directories made on the way, and the destination directory itself, are
made as root (BuildKit's `testCopyChownExistingDir`). Item 6: --chmod gives its mode to the
directories made on the way (BuildKit's `testCopyChmod`), 0755 for a symbolic mode.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from stepbuild.build.copy_files import Copier, Owner, Placement, open_root
from stepbuild.fs.modes import parse

pytestmark = pytest.mark.root  # chown


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A stage's /app: a dir 124:125 mode 0750 holding a file 123:123 mode 0600, a subdir
    126:127 and a symlink 128:129."""
    app = tmp_path / "src" / "app"
    (app / "sub").mkdir(parents=True)
    (app / "f").write_text("f")
    os.symlink("f", app / "link")
    for path, uid, gid in ((app / "f", 123, 123), (app / "sub", 126, 127), (app, 124, 125)):
        os.chown(path, uid, gid)
    os.lchown(app / "link", 128, 129)
    os.chmod(app / "f", 0o600)
    os.chmod(app, 0o750)
    return app


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root" / "existing").mkdir(parents=True)
    os.chown(tmp_path / "root" / "existing", 500, 600)
    return tmp_path / "root"


@contextmanager
def copier(root: Path, place: Placement) -> Iterator[Copier]:
    with open_root(root) as root_fd:
        copying = Copier(root_fd, place)
        try:
            yield copying
            copying.finish()
        finally:
            copying.close()


def copy_tree(copying: Copier, app: Path, dest: str) -> None:
    """What `COPY --from=stage /app <dest>` does: the directory, then its entries."""
    copying.make_dir(dest, os.lstat(app), top=True)
    copying.make_dir(f"{dest}/sub", os.lstat(app / "sub"))
    copying.copy_symlink("f", f"{dest}/link", os.lstat(app / "link"))
    fd = os.open(app / "f", os.O_RDONLY)
    try:
        copying.copy_file(fd, f"{dest}/f", os.fstat(fd))
    finally:
        os.close(fd)


def owners(root: Path, *paths: str) -> list[str]:
    return [f"{p} {s.st_uid}:{s.st_gid} {s.st_mode & 0o7777:o}"
            for p in paths for s in [os.lstat(root / p.lstrip("/"))]]


def test_without_chown_the_sources_owners_are_kept(source: Path, root: Path) -> None:
    with copier(root, Placement("/new/app", owner=None)) as copying:
        copy_tree(copying, source, "/new/app")
    assert owners(root, "/new", "/new/app", "/new/app/f", "/new/app/sub")[:4] == [
        "/new 0:0 755",            # made on the way: as root
        "/new/app 0:0 750",        # the destination made: as root, the source's mode
        "/new/app/f 123:123 600",  # the entries: their own owners
        "/new/app/sub 126:127 755"]
    assert owners(root, "/new/app/link")[0].startswith("/new/app/link 128:129 ")


def test_an_existing_destination_keeps_its_owner(source: Path, root: Path) -> None:
    with copier(root, Placement("/existing", owner=None)) as copying:
        copy_tree(copying, source, "/existing")
    assert owners(root, "/existing", "/existing/f") == [
        "/existing 500:600 755", "/existing/f 123:123 600"]


def test_chown_sets_every_owner(source: Path, root: Path) -> None:
    with copier(root, Placement("/new/app", owner=Owner(7, 8))) as copying:
        copy_tree(copying, source, "/new/app")
    assert [line.split()[1] for line in owners(
        root, "/new", "/new/app", "/new/app/f", "/new/app/sub", "/new/app/link")] == ["7:8"] * 5


def test_heredocs_without_chown_are_roots(root: Path) -> None:
    with copier(root, Placement("/new/", owner=None)) as copying:
        copying.write_file("/new/doc", b"doc", 0o644, 0)
    assert owners(root, "/new/doc") == ["/new/doc 0:0 644"]


@pytest.mark.parametrize(("chmod", "made", "file"), [
    ("777", "777", "777"),
    ("770", "770", "770"),
    ("4755", "755", "4755"),  # the set-id bit on the file only
    ("u+x", "755", "700"),    # symbolic: applied to the source's 0600; dirs made 0755
])
def test_chmod_gives_its_mode_to_the_directories_made(source: Path, root: Path, chmod: str,
                                                      made: str, file: str) -> None:
    # BuildKit's testCopyChmod: COPY --chmod=777 foo /parent/foo makes /parent 0777, then
    # COPY --chmod=770 foo /parent/sub/foo makes /parent/sub 0770.
    fd = os.open(source / "f", os.O_RDONLY)
    try:
        with copier(root, Placement("/parent/sub/f", chmod=parse(chmod))) as copying:
            copying.copy_file(fd, "/parent/sub/f", os.fstat(fd))
        with copier(root, Placement("/existing/f", chmod=parse(chmod))) as copying:
            copying.copy_file(fd, "/existing/f", os.fstat(fd))
    finally:
        os.close(fd)
    assert owners(root, "/parent", "/parent/sub", "/parent/sub/f", "/existing") == [
        f"/parent 0:0 {made}", f"/parent/sub 0:0 {made}", f"/parent/sub/f 0:0 {file}",
        "/existing 500:600 755"]  # an existing directory on the way is left as it is


@pytest.mark.parametrize(("chmod", "top", "inner", "file"), [
    ("2770", "770", "2770", "2770"),  # the destination is made like the dirs on the way
    ("a+X", "755", "755", "600"),     # X: dirs get x, the 0600 file does not
    ("go=u", "755", "777", "666"),
])
def test_chmod_on_a_copied_tree(source: Path, root: Path, chmod: str, top: str, inner: str,
                                file: str) -> None:
    with copier(root, Placement("/new/app", owner=None, chmod=parse(chmod))) as copying:
        copy_tree(copying, source, "/new/app")
    assert owners(root, "/new/app", "/new/app/sub", "/new/app/f") == [
        f"/new/app 0:0 {top}", f"/new/app/sub 126:127 {inner}", f"/new/app/f 123:123 {file}"]
