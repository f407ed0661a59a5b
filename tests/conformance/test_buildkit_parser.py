"""BuildKit's parser test suite (../shared/conformance/buildkit-parser), run against stepbuild.

Positive cases must dump exactly like BuildKit's `result` files (syntax level); negative cases
must be rejected with a line; line ranges, heredocs, directives, JSON arrays and word splitting
must match the derived tables. A summary test reports the pass count of every part.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from stepbuild.errors import ParseError
from stepbuild.frontend.flags import FlagError, Kind, parse_flags
from stepbuild.frontend.parse import decode, parse, parse_syntax
from stepbuild.frontend.syntax import (
    ArgumentError,
    chomp_heredoc,
    dump,
    heredocs_in_line,
    parse_heredoc_word,
    parse_json_array,
    split_words_keeping_quotes,
)

SUITE = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "buildkit-parser"


def _cases(folder: str) -> list[Path]:
    root = SUITE / folder
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _derived(name: str) -> dict:
    return json.loads((SUITE / "derived" / name).read_text(encoding="utf-8"))


def _syntax(path: Path):
    return parse_syntax(decode(path.read_bytes(), str(path)), str(path))


# --- positive and negative testfiles ------------------------------------------------------


def check_positive(case: Path) -> str | None:
    expected = (case / "result").read_text(encoding="utf-8")
    got = dump(list(_syntax(case / "Dockerfile").nodes))
    return None if got == expected else f"dump differs:\n{got}\nexpected:\n{expected}"


def check_negative(case: Path) -> str | None:
    try:
        _syntax(case / "Dockerfile")
    except ParseError as exc:
        expected = _derived("negative-expectations.json")["cases"].get(case.name)
        if expected and expected["buildkit_error"] not in exc.message:
            return f"wrong error {exc.message!r}"
        line = exc.position.line if exc.position else 0
        want = expected["buildkit_error_line_ranges"][0][0] if expected else None
        if want is not None and line != want:
            return f"error on line {line}, BuildKit says {want}"
        return None
    return "accepted, must be rejected"


@pytest.mark.parametrize("case", _cases("testfiles"), ids=lambda p: p.name)
def test_positive_case_dumps_like_buildkit(case: Path) -> None:
    assert check_positive(case) is None, check_positive(case)


@pytest.mark.parametrize("case", _cases("testfiles-negative"), ids=lambda p: p.name)
def test_negative_case_is_rejected_with_a_line(case: Path) -> None:
    assert check_negative(case) is None, check_negative(case)


def check_legacy(case: Path) -> str | None:
    """moby-legacy: what current BuildKit makes of each old file (modern-parser-outcome.json).

    Where it parses, the dump must equal BuildKit's modern dump, and, with the ENV/LABEL
    separator element dropped, the legacy `result`. Where BuildKit rejects it (the old
    double-backtick escape), we must reject it too.
    """
    outcomes = json.loads((SUITE / "moby-legacy" / "modern-parser-outcome.json").read_text())
    outcome = outcomes["cases"][f"moby-legacy/testfiles/{case.name}/Dockerfile"]
    try:
        nodes = _syntax(case / "Dockerfile").nodes
    except ParseError as exc:
        return None if not outcome["modern_ok"] else f"rejected: {exc.message}"
    if not outcome["modern_ok"]:
        return f"accepted, BuildKit says {outcome['modern_error']}"
    if dump(list(nodes)).rstrip("\n") != outcome["modern_dump"].rstrip("\n"):
        return f"dump differs from BuildKit's:\n{dump(list(nodes))}"
    legacy = []
    for node in nodes:
        args = node.args
        if node.keyword in ("env", "label"):
            args = tuple(a for i, a in enumerate(args) if i % 3 != 2)
        legacy.append(dataclasses.replace(node, args=args).dump())
    expected = (case / "result").read_text(encoding="utf-8")
    got = "".join(line + "\n" for line in legacy)
    return None if got == expected else f"legacy dump differs:\n{got}\nexpected:\n{expected}"


@pytest.mark.parametrize("case", _cases("moby-legacy/testfiles"), ids=lambda p: p.name)
def test_moby_legacy_case(case: Path) -> None:
    assert check_legacy(case) is None, check_legacy(case)


@pytest.mark.parametrize("case", _cases("moby-legacy/testfiles-negative"), ids=lambda p: p.name)
def test_moby_legacy_negative_case(case: Path) -> None:
    with pytest.raises(ParseError):
        _syntax(case / "Dockerfile")


# --- line numbers, heredocs, warnings --------------------------------------------------------


def check_line_numbers() -> str | None:
    expected = _derived("testfile-line.json")
    nodes = _syntax(SUITE / "testfile-line" / "Dockerfile").nodes
    spans = [[n.start_line, n.end_line] for n in nodes]
    if spans != expected["children"]:
        return f"spans {spans} != {expected['children']}"
    if (nodes[0].start_line, nodes[-1].end_line) != (
            expected["ast_start_line"], expected["ast_end_line"]):
        return "whole-file span differs"
    return None


def test_line_numbers() -> None:
    assert check_line_numbers() is None, check_line_numbers()


def check_heredocs() -> str | None:
    expected = _derived("heredoc/expected.json")["heredocs_by_instruction_after_from"]
    nodes = _syntax(SUITE / "derived" / "heredoc" / "Dockerfile").nodes
    got = [[{"name": h.name, "content": h.content, "expand": h.expand, "chomp": h.chomp,
             "fd": h.fd} for h in node.heredocs] for node in nodes[1:]]
    if got != expected:
        bad = next(i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b)
        return f"instruction {bad + 2}: {got[bad]} != {expected[bad]}"
    result = (SUITE / "derived" / "heredoc" / "result").read_text(encoding="utf-8")
    return None if dump(list(nodes)) == result else "heredoc dump differs"


def test_heredocs_extracted() -> None:
    assert check_heredocs() is None, check_heredocs()


def test_json_exec_form_is_not_a_heredoc() -> None:
    nodes = _syntax(SUITE / "derived" / "heredoc-json" / "Dockerfile").nodes
    assert all(not n.heredocs for n in nodes)
    result = (SUITE / "derived" / "heredoc-json" / "result").read_text(encoding="utf-8")
    assert dump(list(nodes)) == result


def check_heredoc_words() -> str | None:
    data = _derived("heredoc-words.json")
    for word in data["valid"]:
        heredoc = parse_heredoc_word(word)
        if heredoc is None or heredoc.name != data["valid_expected_name"]:
            return f"{word!r} should be heredoc {data['valid_expected_name']}"
    for word in data["invalid"]:
        try:
            parse_heredoc_word(word)
            return f"{word!r} should be an error"
        except ArgumentError:
            pass
    for word in data["not_heredoc"]:
        if parse_heredoc_word(word) is not None:
            return f"{word!r} is not a heredoc"
    for case in data["from_line"]:
        names = [h.name for h in heredocs_in_line(case["line"])]
        if names != case["heredoc_names"]:
            return f"{case['line']!r}: {names} != {case['heredoc_names']}"
    if chomp_heredoc(data["chomp"]["input"]) != data["chomp"]["expected"]:
        return "chomp differs"
    return None


def test_heredoc_words() -> None:
    assert check_heredoc_words() is None, check_heredoc_words()


def test_empty_continuation_lines_warn() -> None:
    expected = json.loads((SUITE / "derived" / "empty-continuation" / "expected.json").read_text())
    tree = _syntax(SUITE / "derived" / "empty-continuation" / "Dockerfile")
    empty = [w for w in tree.warnings if "empty continuation line" in w]
    assert len(empty) == expected["warnings_count"]
    for warning, substrings in zip(empty, expected["warning_substrings"], strict=True):
        for text in substrings[1:] or substrings:
            assert text.split(" found in")[0].lower() in warning.lower() or text in warning
    result = (SUITE / "derived" / "empty-continuation" / "result").read_text(encoding="utf-8")
    assert dump(list(tree.nodes)) == result


# --- tables: JSON arrays, words, directives, flags, instruction-level ---------------------------


def check_json_arrays() -> str | None:
    data = _derived("json-arrays.json")
    for text, expected in data["valid"].items():
        if parse_json_array(text) != expected:
            return f"{text!r}: {parse_json_array(text)} != {expected}"
    for text in data["invalid"]:
        try:
            parse_json_array(text)
            return f"{text!r} must be an error"
        except ArgumentError:
            pass
    return None


def test_json_arrays() -> None:
    assert check_json_arrays() is None, check_json_arrays()


def check_parse_words() -> str | None:
    for case in _derived("parse-words.json")["cases"]:
        got = split_words_keeping_quotes(case["input"], "\\")
        if got != case["expected"]:
            return f"{case['input']!r}: {got} != {case['expected']}"
    return None


def test_parse_words() -> None:
    assert check_parse_words() is None, check_parse_words()


def check_directives() -> str | None:
    data = _derived("directives.json")
    for case in data["parse_all"]:
        tree = parse_syntax(case["text"] + "FROM scratch\n")
        got = [{"name": d.name, "value": d.value} for d in tree.directives]
        if got != case["expect"]:
            return f"{case['text']!r}: {got} != {case['expect']}"
    from stepbuild.frontend.lines import detect_directive

    for group, name in (("detect_syntax", "syntax"), ("parse_directive_check", "check")):
        for case in data[group]:
            found = detect_directive(case["text"], name)
            want = case.get("ref", case.get("value"))
            if bool(found) != case["found"] or (found and want is not None
                                                and found.value != want):
                return f"{group} {case['text']!r}: {found} (expected {want})"
            if found and "line" in case and found.line != case["line"]:
                return f"{group} {case['text']!r}: line {found.line} != {case['line']}"
    return None


def test_directives() -> None:
    assert check_directives() is None, check_directives()


def check_bflags() -> str | None:
    for case in _derived("bflags.json")["cases"]:
        declared = {name: Kind.BOOL if d["type"] == "bool" else Kind.STRING
                    for name, d in case["declare"].items()}
        try:
            values = parse_flags(tuple(case["args"]), declared)
        except FlagError:
            if case["expect"] != "error":
                return f"{case['args']}: unexpected error"
            continue
        if case["expect"] == "error":
            return f"{case['args']}: must be an error"
        for name, want in case.get("values", {}).items():
            default = case["declare"][name]["default"]
            got = values.values.get(name, default)
            if got != want:
                return f"{case['args']}: {name}={got!r} != {want!r}"
        if "used" in case and sorted(values.used) != sorted(case["used"]):
            return f"{case['args']}: used {sorted(values.used)} != {case['used']}"
    return None


def test_builder_flags() -> None:
    assert check_bflags() is None, check_bflags()


def check_instruction_errors() -> str | None:
    for case in _derived("instructions-errors.json")["cases"]:
        try:
            parse(case["dockerfile"])
            return f"{case['name']}: accepted"
        except ParseError as exc:
            if case["expected_error_substring"] not in exc.message:
                return f"{case['name']}: {exc.message!r}"
            if exc.position is None or exc.position.line < 1:
                return f"{case['name']}: no line"
    return None


def test_instruction_errors() -> None:
    assert check_instruction_errors() is None, check_instruction_errors()


def check_instructions_ok() -> str | None:
    from stepbuild.frontend.instructions import Healthcheck, Run

    for case in _derived("instructions-ok.json")["cases"]:
        instruction = parse(case["dockerfile"]).instructions[0]
        expect = case["expect"]
        if "healthcheck_test" in expect:
            assert isinstance(instruction, Healthcheck)
            if list(instruction.test) != expect["healthcheck_test"]:
                return f"{case['dockerfile']}: {instruction.test}"
        if "flags_used" in expect:
            assert isinstance(instruction, Run)
            if [m.type for m in instruction.mounts] != ["tmpfs"]:
                return f"{case['dockerfile']}: mounts {instruction.mounts}"
    return None


def test_instructions_ok() -> None:
    assert check_instructions_ok() is None, check_instructions_ok()


def check_instructions_heredoc() -> str | None:
    from stepbuild.frontend.instructions import Copy, Run

    data = _derived("instructions-heredoc.json")
    for case in data["copy_heredoc"]:
        copy = parse(case["dockerfile"]).instructions[0]
        assert isinstance(copy, Copy)
        want = case["sources_and_dest"]
        contents = [{"path": s.name, "data": s.data, "expand": s.expand} for s in copy.inline]
        if (copy.dest != want["dest_path"] or list(copy.sources) != (want["source_paths"] or [])
                or contents != (want["source_contents"] or [])):
            return f"{case['dockerfile']!r}: {copy}"
    for case in data["run_heredoc"]:
        run = parse(case["dockerfile"]).instructions[0]
        assert isinstance(run, Run)
        files = [{"name": h.name, "data": h.content, "chomp": h.chomp}
                 for h in run.command.heredocs]
        if (run.command.shell_form != case["prepend_shell"]
                or list(run.command.args) != case["cmd_line"] or files != (case["files"] or [])):
            return f"{case['dockerfile']!r}: {run.command}"
    return None


def test_instructions_heredoc() -> None:
    assert check_instructions_heredoc() is None, check_instructions_heredoc()


# --- the summary -------------------------------------------------------------------------------


def test_summary_every_case_passes(capsys: pytest.CaptureFixture[str]) -> None:
    """Run everything once more and report the pass counts (pytest -s shows them)."""
    parts = {
        "testfiles": [check_positive(c) for c in _cases("testfiles")],
        "testfiles-negative": [check_negative(c) for c in _cases("testfiles-negative")],
        "moby-legacy": [check_legacy(c) for c in _cases("moby-legacy/testfiles")],
        "tables": [check_line_numbers(), check_heredocs(), check_heredoc_words(),
                   check_json_arrays(), check_parse_words(), check_directives(),
                   check_bflags(), check_instruction_errors(), check_instructions_ok(),
                   check_instructions_heredoc()],
    }
    report = ", ".join(f"{sum(r is None for r in results)}/{len(results)} {name}"
                       for name, results in parts.items())
    with capsys.disabled():
        print(f"\nbuildkit parser conformance: {report}")
    assert len(parts["testfiles"]) == 33 and len(parts["testfiles-negative"]) == 4
    assert all(r is None for results in parts.values() for r in results), report
