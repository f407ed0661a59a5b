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
