"""Every bad Stepfile in tests/data/stepfiles/invalid/ is one ParseError at the right place.

Each case directory holds a `Stepfile` and `error.txt`: the first line of the rendered error,
`Stepfile:LINE:COLUMN: message`. The rendering must also show the offending line and a caret
under the column, in at most four lines, with no traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stepbuild.errors import ParseError
from stepbuild.frontend.parse import decode, parse

CASES = Path(__file__).resolve().parents[2] / "data" / "stepfiles" / "invalid"


@pytest.mark.parametrize("case", sorted(CASES.iterdir()), ids=lambda p: p.name)
def test_invalid_stepfile_is_located(case: Path) -> None:
    expected = (case / "error.txt").read_text(encoding="utf-8").splitlines()[0]
    with pytest.raises(ParseError) as caught:
        parse(decode((case / "Stepfile").read_bytes(), "Stepfile"), "Stepfile")
    rendered = caught.value.render().splitlines()
    assert rendered[0] == expected
    assert caught.value.exit_code == 2
    position = caught.value.position
    assert position is not None
    if position.text:
        assert rendered[1].strip() == position.text.expandtabs(1).strip()
        caret = rendered[2]
        assert caret.strip() == "^"
        assert caret.index("^") - 2 == position.column - 1
    assert len(rendered) <= 4
    assert "Traceback" not in caught.value.render()


@pytest.mark.parametrize(("text", "line", "column"), [
    ("FROM a\nRUN echo a\0b\n", 2, 11),
    ("\0FROM a\n", 1, 1),
    ("\ufeffFROM a\0\n", 1, 7),                    # the BOM is not a column
    ("FROM a\n# a comment \0\nRUN true\n", 2, 13),  # comments too: anywhere in the file
    ("FROM a\nRUN <<EOF\nx\0y\nEOF\n", 3, 2),        # and heredoc bodies
    ("FROM a\r\nRUN \\\r\n  \0\r\n", 3, 3),
])
def test_nul_character_is_located(text: str, line: int, column: int) -> None:
    with pytest.raises(ParseError) as caught:
        parse(text, "Stepfile")
    position = caught.value.position
    assert position is not None
    assert (position.line, position.column) == (line, column)
    assert "\0" not in caught.value.render()  # shown as U+2400, so the caret lines up
    assert caught.value.message == "the file contains a NUL character"
