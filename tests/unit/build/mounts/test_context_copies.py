"""The context copies context binds show: made once per build and selection, files kept
as the context has them (modes, mtimes, links), made again if the scratch dir went."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from stepbuild.build.mounts.context_copies import ContextCopies
from stepbuild.sources.context import BuildContext

MTIME = 1_000_000_000


def context_dir(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    (root / "src" / "sub").mkdir(parents=True)
    (root / "src" / "a.txt").write_text("a")
    os.chmod(root / "src" / "a.txt", 0o640)
    os.utime(root / "src" / "a.txt", ns=(MTIME, MTIME))
    (root / "src" / "sub" / "b").write_text("b")
    (root / "src" / "link").symlink_to("a.txt")
    return root


def scratch(directory: Path, made: list[Path]) -> Callable[[str], Path]:
    """An executor's scratch_file: a fresh path in `directory`, recorded in `made`."""
    directory.mkdir()

    def scratch_file(name: str) -> Path:
        made.append(directory / f"{len(made)}-{name}")
        return made[-1]
    return scratch_file


def test_a_selection_is_copied_once_as_the_context_has_it(tmp_path: Path) -> None:
    context = BuildContext(context_dir(tmp_path))
    made: list[Path] = []
    copies = ContextCopies(context, scratch(tmp_path / "scratch", made))
    copy = copies.copy_of(context.select(["src"]))
    assert made == [copy]
    assert (copy / "a.txt").read_text() == "a" and (copy / "sub" / "b").read_text() == "b"
    st = (copy / "a.txt").stat()
    assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o640, MTIME)
    assert os.readlink(copy / "link") == "a.txt"
    assert copies.copy_of(context.select(["src"])) == copy  # a later step: the same copy
    file_copy = copies.copy_of(context.select(["src/a.txt"]))  # another selection: a file
    assert file_copy.read_text() == "a" and made == [copy, file_copy]


def test_a_copy_gone_with_the_scratch_dir_is_made_again(tmp_path: Path) -> None:
    context = BuildContext(context_dir(tmp_path))
    made: list[Path] = []
    copies = ContextCopies(context, scratch(tmp_path / "scratch", made))
    first = copies.copy_of(context.select(["src"]))
    shutil.rmtree(tmp_path / "scratch")  # Executor.close
    (tmp_path / "scratch").mkdir()
    again = copies.copy_of(context.select(["src"]))
    assert again != first and (again / "a.txt").read_text() == "a"


def test_each_build_makes_its_own_copies(tmp_path: Path) -> None:
    context = BuildContext(context_dir(tmp_path))
    made: list[Path] = []
    one = ContextCopies(context, scratch(tmp_path / "one", made))
    two = ContextCopies(context, scratch(tmp_path / "two", made))
    selection = context.select(["src"])
    assert one.copy_of(selection).parent != two.copy_of(selection).parent
