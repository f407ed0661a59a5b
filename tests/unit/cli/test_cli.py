"""`stepbuild parse`: file lookup, output forms, exit codes and error rendering (real processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[3]


def stepbuild(*args: str, cwd: Path | None = None, stdin: bytes | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepbuild", *args], cwd=cwd or PROJECT, input=stdin and
        stdin.decode(), capture_output=True, text=True, check=False,
        env={"PYTHONPATH": str(PROJECT), "PATH": "/usr/bin:/bin"},
    )


def test_stepfile_is_preferred_then_dockerfile(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM docker\n")
    assert '(from "docker")' in stepbuild("parse", str(tmp_path)).stdout
    (tmp_path / "Stepfile").write_text("FROM step\n")
    assert '(from "step")' in stepbuild("parse", str(tmp_path)).stdout


def test_missing_stepfile_is_a_usage_error(tmp_path: Path) -> None:
    result = stepbuild("parse", str(tmp_path))
    assert result.returncode == 2
    assert "no Stepfile, Containerfile or Dockerfile" in result.stderr
    assert "Traceback" not in result.stderr


def test_reads_standard_input() -> None:
    result = stepbuild("parse", "-f", "-", stdin=b"FROM a\nRUN true\n")
    assert result.returncode == 0
    assert result.stdout.splitlines()[1].split() == ["2", '(run', '"true")']


def test_json_lines() -> None:
    result = stepbuild("parse", "--json", "-f", "-",
                       stdin=b"FROM a\nCOPY --link <<EOF /x\nhi\nEOF\n")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[1]["instruction"] == "copy"
    assert rows[1]["flags"] == ["--link"] and rows[1]["args"] == ["<<EOF", "/x"]
    assert rows[1]["heredocs"] == [{"name": "EOF", "content": "hi\n", "expand": True,
                                    "chomp": False, "fd": 0}]
    assert (rows[1]["line"], rows[1]["end_line"]) == (2, 4)


def test_parse_error_is_three_lines_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "Stepfile").write_text("FROM a\nCOPY --nope=1 a b\n")
    result = stepbuild("parse", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"stepbuild: error: {tmp_path}/Stepfile:2:6: unknown flag: --nope"
    assert lines[1:] == ["  COPY --nope=1 a b", "       ^"]


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "Stepfile").write_text("NOPE\n")
    result = stepbuild("--debug", "parse", str(tmp_path))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_warnings_go_to_stderr_and_do_not_stop(tmp_path: Path) -> None:
    (tmp_path / "Stepfile").write_text("FROM a\nMAINTAINER me\nRUN a \\\n\n  b\n")
    result = stepbuild("parse", str(tmp_path))
    assert result.returncode == 0
    assert "MAINTAINER is deprecated" in result.stderr
    assert "empty continuation line" in result.stderr
    assert len(result.stdout.splitlines()) == 3


def test_syntax_tree_keeps_unknown_instructions(tmp_path: Path) -> None:
    (tmp_path / "Stepfile").write_text("FROM a\nFOO bar\n")
    assert stepbuild("parse", "--syntax-tree", str(tmp_path)).stdout == (
        '(from "a")\n(foo "")\n')
    assert stepbuild("parse", str(tmp_path)).returncode == 2
