"""WORKDIR makes its directory (build/workdir.py): BuildKit's `mkdir -p`, 0755, owned by the
USER in effect, symlinks resolved inside the image root, an existing directory left as it is;
its key; its errors located at the instruction. The root here is a plain directory standing
in for the mounted overlay."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from stepbuild.build import workdir
from stepbuild.build.plan import Scope, Stages
from stepbuild.build.state import ImageState, scratch
from stepbuild.errors import BuildError
from stepbuild.frontend import instructions as ins
from stepbuild.frontend.parse import parse

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65533:\nstaff:x:50:\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    image = tmp_path / "root"
    (image / "etc").mkdir(parents=True)
    (image / "etc" / "passwd").write_text(PASSWD)
    (image / "etc" / "group").write_text(GROUP)
    return image


def make(root: Path, path: str, user: str = "") -> None:
    workdir.perform(workdir.WorkdirWork(path, user, "Stepfile:4:1"), root)


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    info = os.lstat(path)
    assert stat.S_ISDIR(info.st_mode)
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


@pytest.mark.parametrize(("user", "ids"), [
    ("", (0, 0)),
    ("nobody", (65534, 65534)),        # the name and its primary group, from /etc/passwd
    ("nobody:staff", (65534, 50)),     # a group by name, from /etc/group
    ("1000", (1000, 1000)),            # a lone uid is the gid too (BuildKit's WithUser)
    ("1000:50", (1000, 50)),
    ("root", (0, 0)),
    ("ghost", (0, 0)),                 # a name the image lacks is root, as in BuildKit
    ("nobody:ghosts", (65534, 65534)),  # a group it lacks keeps the user's gid
    ("1000:ghosts", (1000, 1000)),
])
def test_the_directory_and_its_parents_are_made_0755_owned_by_the_user(
        root: Path, user: str, ids: tuple[int, int]) -> None:
    make(root, "/srv/data/sub", user)
    for made in ("srv", "srv/data", "srv/data/sub"):
        assert owner_and_mode(root / made) == (*ids, 0o755)


def test_an_unreadable_passwd_is_a_located_error_not_root(root: Path) -> None:
    (root / "etc" / "passwd").unlink()
    (root / "etc" / "passwd").mkdir()  # a name cannot be known: never guess root
    with pytest.raises(BuildError) as caught:
        make(root, "/app", "nobody")
    assert caught.value.message.startswith("Stepfile:4:1: WORKDIR as USER nobody: ")
    assert "cannot read /etc/passwd" in caught.value.message
    assert not (root / "app").exists()


def test_root_needs_no_passwd(tmp_path: Path) -> None:
    make(tmp_path, "/app", "root")  # FROM scratch: no /etc/passwd at all
    assert owner_and_mode(tmp_path / "app") == (0, 0, 0o755)


def test_an_existing_directory_is_left_as_it_is(root: Path) -> None:
    (root / "srv").mkdir(mode=0o700)
    os.chown(root / "srv", 7, 8)
    make(root, "/srv/app", "nobody")
    assert owner_and_mode(root / "srv") == (7, 8, 0o700)
    assert owner_and_mode(root / "srv/app") == (65534, 65534, 0o755)
    make(root, "/srv", "1000")
    assert owner_and_mode(root / "srv") == (7, 8, 0o700)


def test_symlinks_on_the_way_are_followed_inside_the_root(root: Path, tmp_path: Path) -> None:
    (root / "real").mkdir()
    (root / "link").symlink_to("/real")  # absolute: the image's /real, not the host's
    (root / "up").symlink_to("../../../outside")
    make(root, "/link/app")
    make(root, "/up/x")
    assert (root / "real" / "app").is_dir()
    assert (root / "outside" / "x").is_dir()  # `..` stops at the image root
    assert not (tmp_path.parent / "outside").exists()


def test_a_file_in_the_way_is_a_located_error(root: Path) -> None:
    (root / "srv").write_text("a file")
    with pytest.raises(BuildError) as caught:
        make(root, "/srv/app")
    assert caught.value.message.startswith(
        "Stepfile:4:1: WORKDIR /srv/app: cannot make the directory:")
    assert "not a directory" in caught.value.message


@pytest.mark.parametrize(("user", "words"), [
    ("4294967295", "out of range"),
    ("nobody:4294967295", "out of range"),
])
def test_a_user_the_image_cannot_give_is_a_located_error(root: Path, user: str,
                                                          words: str) -> None:
    with pytest.raises(BuildError) as caught:
        make(root, "/app", user)
    assert caught.value.message.startswith(f"Stepfile:4:1: WORKDIR as USER {user}: ")
    assert words in caught.value.message
    assert not (root / "app").exists()


@dataclass
class _Executor:
    source_date_epoch: int | None = None


@dataclass
class _Run:
    stages: Stages


def prepared_key(text: str, state: ImageState, epoch: int | None = None) -> str:
    stepfile = parse(f"FROM scratch\n{text}\n")
    instruction = stepfile.instructions[-1]
    assert isinstance(instruction, ins.Workdir)
    run = _Run(Stages("Stepfile", (), ()))
    step = workdir.prepare(_Executor(epoch), instruction, state, Scope(), run)  # duck-typed
    assert step.created_by.startswith("WORKDIR /")
    return step.key


def test_the_key_covers_the_directory_the_user_the_parent_and_source_date_epoch() -> None:
    base = scratch()
    key = prepared_key("WORKDIR /app", base)
    assert prepared_key("WORKDIR /app/", base) == key  # the same directory
    assert prepared_key("WORKDIR app", base) == key  # relative to /
    assert prepared_key("WORKDIR /other", base) != key
    assert prepared_key("WORKDIR /app", base.with_config("USER 1", User="1")) != key
    assert prepared_key("WORKDIR /app", base.with_layer("sha256:" + "a" * 64, "RUN x",
                                                        base.created)) != key
    assert prepared_key("WORKDIR /app", base, epoch=0) != key
