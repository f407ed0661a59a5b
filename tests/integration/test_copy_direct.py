"""COPY of a directory into a destination that does not exist yet writes below it straight to
the overlay's upper dir (copy.Copier.write_below_directly). The image must be exactly what
writing through the overlay gives: these cases are where the two could differ.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.builds import Stepbuild, store_with_base, write_context

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("copy-direct")


@pytest.fixture(scope="module")
def sb(work: Path) -> Stepbuild:
    return store_with_base(work, "store")


def tree(directory: Path) -> Path:
    """A source directory: two files, a subdir, a symlink and a hard link."""
    (directory / "sub").mkdir(parents=True)
    (directory / "a.txt").write_text("a\n")
    (directory / "sub" / "b.txt").write_text("b\n")
    os.symlink("a.txt", directory / "link")
    os.link(directory / "a.txt", directory / "sub" / "hard")
    (directory / "sub" / "b.txt").chmod(0o640)
    return directory


def build_and_show(sb: Stepbuild, work: Path, name: str, stepfile: str, show: str) -> str:
    context = write_context(work / name, stepfile)
    tree(context / "src")
    sb.build(context, "-q", "-t", name)
    return sb.run(name, "sh", "-c", show)


def test_a_parent_from_the_image_keeps_its_owner_and_mode(sb: Stepbuild, work: Path) -> None:
    shown = build_and_show(sb, work, "parent", (
        "FROM base\nRUN mkdir -m 710 /app && chown 5:6 /app\nCOPY src/ /app/new/\n"),
        "stat -c '%a %u:%g %n' /app /app/new /app/new/sub /app/new/sub/b.txt;"
        " cat /app/new/a.txt /app/new/sub/hard; readlink /app/new/link;"
        " stat -c %i /app/new/a.txt /app/new/sub/hard | uniq | wc -l")
    assert shown.splitlines() == [
        "710 5:6 /app", "755 0:0 /app/new", "755 0:0 /app/new/sub", "640 0:0 /app/new/sub/b.txt",
        "a", "a", "a.txt", "1"]  # the hard link is one inode


def test_a_destination_through_a_symlink(sb: Stepbuild, work: Path) -> None:
    shown = build_and_show(sb, work, "through-link", (
        "FROM base\nRUN mkdir /real && ln -s /real /lnk\nCOPY src/ /lnk/inside/\n"),
        "readlink /lnk; cat /real/inside/a.txt /real/inside/sub/b.txt")
    assert shown.splitlines() == ["/real", "a", "b"]


def test_a_destination_deleted_by_an_earlier_layer_shows_only_the_copy(
        sb: Stepbuild, work: Path) -> None:
    shown = build_and_show(sb, work, "over-whiteout", (
        "FROM base\nRUN mkdir -p /app/old && echo old > /app/old/stale\n"
        "RUN rm -rf /app/old\nCOPY src/ /app/old/\n"),
        "ls -A /app/old | sort | tr '\\n' ' '")
    assert shown.split() == ["a.txt", "link", "sub"]


def test_two_sources_into_one_new_directory(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "two", "FROM base\nCOPY one/ two/ /dest/\n",
                            {"one/same.txt": "one\n", "one/only1": "1\n",
                             "two/same.txt": "two\n", "two/only2": "2\n"})
    sb.build(context, "-q", "-t", "two")
    assert sb.run("two", "sh", "-c", "cat /dest/same.txt /dest/only1 /dest/only2") == \
        "two\n1\n2\n"


def test_chown_and_chmod_apply_below_a_new_directory(sb: Stepbuild, work: Path) -> None:
    shown = build_and_show(sb, work, "chown", (
        "FROM base\nCOPY --chown=7:8 --chmod=700 src/ /new/deeper/\n"),
        "stat -c '%a %u:%g %n' /new /new/deeper /new/deeper/sub /new/deeper/a.txt")
    # /new is made on the way: it gets --chmod too (BuildKit's testCopyChmod; issue 11 item 6)
    assert shown.splitlines() == ["700 7:8 /new", "700 7:8 /new/deeper",
                                  "700 7:8 /new/deeper/sub", "700 7:8 /new/deeper/a.txt"]
