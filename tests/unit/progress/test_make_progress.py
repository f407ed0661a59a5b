"""make_progress: one view per mode; rich is loaded by the tty view only."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from stepbuild.progress import make_progress
from stepbuild.progress.plain import PlainView
from stepbuild.progress.rawjson import RawJsonView
from stepbuild.progress.tty import TtyView

PROJECT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(("mode", "view"), [("plain", PlainView), ("quiet", PlainView),
                                            ("rawjson", RawJsonView), ("tty", TtyView)])
def test_a_view_per_mode(mode: str, view: type) -> None:
    progress = make_progress(mode, io.StringIO())
    try:
        assert isinstance(progress.view, view)
        assert progress.quiet == (mode == "quiet")
    finally:
        progress.close()


def test_an_unknown_mode_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="progress mode"):
        make_progress("fancy", io.StringIO())


def test_only_the_tty_view_imports_rich() -> None:
    script = ("import io, sys\n"
              "from stepbuild.progress import make_progress\n"
              "from stepbuild.cli import main, noop, progress_flags\n"
              "for mode in ('plain', 'quiet', 'rawjson'):\n"
              "    make_progress(mode, io.StringIO(), heartbeat=5).close()\n"
              "assert 'rich' not in sys.modules, 'rich imported'\n"
              "make_progress('tty', io.StringIO()).close()\n"
              "assert 'rich' in sys.modules\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=PROJECT,
                   env={"PYTHONPATH": str(PROJECT)})
