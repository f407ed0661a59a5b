"""The grammar file travels with the package (it lives in grammar/, outside stepbuild/)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def test_grammar_is_packaged(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(PROJECT)],
        check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("stepbuild-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "stepbuild/grammar/stepfile.lark" in names
    packaged = zipfile.ZipFile(wheel).read("stepbuild/grammar/stepfile.lark")
    assert packaged == (PROJECT / "grammar" / "stepfile.lark").read_bytes()
