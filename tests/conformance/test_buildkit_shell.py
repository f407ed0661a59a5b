"""BuildKit's own shell-lexer test tables, run against `stepbuild.frontend.words`.

Data (read-only): /work/shared/conformance/buildkit-parser/derived/, see its README section
"Shell lexer data". Every case is its own test; `test_summary` runs them all and prints counts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stepbuild.errors import ExpansionError
from stepbuild.frontend.words import Lexer

DATA = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "buildkit-parser"
DERIVED = DATA / "derived"
FILES = {
    "envVarTest": "shell-envVarTest.json",
    "wordsTest": "shell-wordsTest.json",
    "matches": "shell-process-word-with-matches.json",
}
LEXER = Lexer()


def _load(key: str) -> dict[str, Any]:
    """The table, or an empty one when missing (test_data_present then fails, loudly)."""
    path = DERIVED / FILES[key]
    if not path.is_file():
        return {"env": [], "cases": []}
    return json.loads(path.read_text(encoding="utf-8"))


def _env(pairs: list[str]) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in pairs)


ENV_TABLE = _load("envVarTest")
ENV_VAR_ENV = _env(ENV_TABLE.get("env", []))
# Platform W cases are Windows-only (case-insensitive names); a Linux builder skips them.
ENV_CASES = [c for c in ENV_TABLE["cases"] if c["platform"] != "W"]
WORDS_CASES = _load("wordsTest")["cases"]
MATCH_CASES = _load("matches")["cases"]


def _outcome(call: Callable[[], Any]) -> tuple[Any, ExpansionError | None]:
    try:
        return call(), None
    except ExpansionError as err:
        return None, err


def _judge(case: dict[str, Any], got: Any, err: ExpansionError | None, want: Any) -> str | None:
    """None if the case passed, else a description of the mismatch."""
    if case.get("expect_error"):
        return None if err else f"{case['input']!r}: expected an error, got {got!r}"
    if err:
        return f"{case['input']!r}: unexpected error {err.message}"
    return None if got == want else f"{case['input']!r}: got {got!r}, want {want!r}"


def check_env_var(case: dict[str, Any]) -> str | None:
    got, err = _outcome(lambda: LEXER.process_word(case["input"], ENV_VAR_ENV))
    return _judge(case, got, err, case.get("expected"))


def check_words(case: dict[str, Any]) -> str | None:
    got, err = _outcome(lambda: LEXER.process_words(case["input"], _env(case["env"])))
    return _judge(case, got, err, case.get("expected_words"))


def check_matches(case: dict[str, Any]) -> str | None:
    got, err = _outcome(lambda: LEXER.process_word_with_matches(case["input"], case["envs"]))
    if got is not None:
        got = (got.value, sorted(got.matched), sorted(got.unmatched))
    want = (
        case.get("expected"),
        sorted(case.get("matched", [])),
        sorted(case.get("unmatched", [])),
    )
    return _judge(case, got, err, want)


def test_data_present() -> None:
    missing = [name for name in FILES.values() if not (DERIVED / name).is_file()]
    assert not missing, (
        f"buildkit conformance data not found: {', '.join(missing)} in {DERIVED} "
        "(expected the read-only /work/shared/conformance/buildkit-parser checkout)"
    )


@pytest.mark.parametrize("case", ENV_CASES, ids=[f"L{c['line']}:{c['input']}" for c in ENV_CASES])
def test_env_var(case: dict[str, Any]) -> None:
    problem = check_env_var(case)
    assert problem is None, problem


@pytest.mark.parametrize(
    "case", WORDS_CASES, ids=[f"L{c['line']}:{c['input']}" for c in WORDS_CASES]
)
def test_words(case: dict[str, Any]) -> None:
    problem = check_words(case)
    assert problem is None, problem


@pytest.mark.parametrize(
    "case", MATCH_CASES, ids=[f"{i:02d}:{c['input']}" for i, c in enumerate(MATCH_CASES)]
)
def test_matches(case: dict[str, Any]) -> None:
    problem = check_matches(case)
    assert problem is None, problem


def test_summary() -> None:
    sets = [
        ("envVarTest", ENV_CASES, check_env_var),
        ("wordsTest", WORDS_CASES, check_words),
        ("matches", MATCH_CASES, check_matches),
    ]
    parts, problems = [], []
    for name, cases, check in sets:
        failed = [p for p in map(check, cases) if p is not None]
        problems += failed
        parts.append(f"{len(cases) - len(failed)}/{len(cases)} {name}")
    line = "buildkit shell conformance: " + ", ".join(parts)
    print(line)
    assert all(cases for _, cases, _ in sets), f"{line} (data missing: see test_data_present)"
    assert not problems, line + "\n" + "\n".join(problems)
