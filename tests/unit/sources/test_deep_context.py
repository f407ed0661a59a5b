"""The build context walk at 10,000 levels (issue 11 item 11): iterative, and with one open
directory whatever the depth (it held one descriptor per level: past RLIMIT_NOFILE a deep
context failed with EMFILE). A dir renamed away under the walk is still caught."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepbuild.errors import ContextError
from stepbuild.sources import context as context_module
from stepbuild.sources.context import BuildContext
from tests.deeptrees import LEVELS, fast_tmp_dir, nest


@pytest.fixture()
def few_descriptors() -> Iterator[None]:
    """RLIMIT_NOFILE far below the depth, for the test's duration."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_context_ten_thousand_levels_deep(tmp_path: Path, few_descriptors: None) -> None:
    with fast_tmp_dir(tmp_path) as ctx:
        (ctx / "deep").mkdir()
        nest(ctx / "deep")
        (group,) = BuildContext(ctx).select(["deep"]).groups
        paths = [e.path for e in group.entries]
        assert len(paths) == LEVELS + 1
        assert paths[-1] == "d/" * LEVELS + "f"


def test_a_dir_moved_during_the_walk_is_a_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "src" / "a" / "b").mkdir(parents=True)
    (tmp_path / "src" / "a" / "b" / "f").write_text("x")
    (tmp_path / "elsewhere").mkdir()
    real_frame = context_module._Selector._frame

    def frame(fd: int, ctx_path: str, *rest: object) -> object:
        if ctx_path == "src/a/b":  # the walk goes into b: move a (b's `..` stays a, a's
            # `..` is then elsewhere, not src)
            os.rename(tmp_path / "src" / "a", tmp_path / "elsewhere" / "a")
        return real_frame(fd, ctx_path, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(context_module._Selector, "_frame", staticmethod(frame))
    with pytest.raises(ContextError, match="changed while it was read: src$"):
        BuildContext(tmp_path).select(["src"])
