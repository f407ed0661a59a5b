"""Docker's path patterns (stepbuild/sources/patterns.py) against the upstream test tables.

Tables transcribed (facts, not code) from:
  * golang/go src/path/filepath/match_test.go `matchTests` (filepath.Match: COPY wildcards)
  * moby/patternmatcher patternmatcher_test.go `TestMatches`, `matchTests`, `compileTests`,
    `TestCleanPatterns*`, and ignorefile/ignorefile_test.go `TestReadAll`
Plus a property test against a line-by-line port of Go's Match algorithm, and one that the
walk pruning (`excludes_dir_wholly`) never drops a path that `matches` would keep.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepbuild.sources.patterns import (
    PatternError,
    PatternMatcher,
    check_source_pattern,
    clean_path,
    compile_pattern,
    has_wildcards,
    match_source,
    read_ignore_file,
    source_pattern_depth,
    split_wildcards,
)

BAD = "bad pattern"

# golang/go src/path/filepath/match_test.go, matchTests: (pattern, name, match or BAD)
GO_MATCH_TESTS = [
    ("abc", "abc", True),
    ("*", "abc", True),
    ("*c", "abc", True),
    ("a*", "a", True),
    ("a*", "abc", True),
    ("a*", "ab/c", False),
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True),
    ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False),
    ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True),
    ("a\\*b", "a*b", True),
    ("a\\*b", "ab", False),
    ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True),
    ("a???b", "a☺b", False),
    ("a[^a][^a][^a]b", "a☺b", False),
    ("[a-ζ]*", "α", True),
    ("*[a-ζ]", "A", False),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("[\\]a]", "]", True),
    ("[\\-]", "-", True),
    ("[x\\-]", "x", True),
    ("[x\\-]", "-", True),
    ("[x\\-]", "z", False),
    ("[\\-x]", "x", True),
    ("[\\-x]", "-", True),
    ("[\\-x]", "a", False),
    ("[]a]", "]", BAD),
    ("[-]", "-", BAD),
    ("[x-]", "x", BAD),
    ("[x-]", "-", BAD),
    ("[x-]", "z", BAD),
    ("[-x]", "x", BAD),
    ("[-x]", "-", BAD),
    ("[-x]", "a", BAD),
    ("\\", "a", BAD),
    ("[a-b-c]", "a", BAD),
    ("[", "a", BAD),
    ("[^", "a", BAD),
    ("[^bc", "a", BAD),
    ("a[", "a", BAD),
    ("a[", "ab", BAD),
    ("a[", "x", BAD),
    ("a/b[", "x", BAD),
    ("*x", "xxx", True),
]


@pytest.mark.parametrize(("pattern", "name", "want"), GO_MATCH_TESTS)
def test_match_source_go_table(pattern: str, name: str, want: object) -> None:
    if want is BAD:
        with pytest.raises(PatternError):
            check_source_pattern(pattern)
        assert match_source(pattern, name) is False  # BuildKit ignores Match's error
    else:
        check_source_pattern(pattern)
        assert match_source(pattern, name) is want


@pytest.mark.parametrize(("pattern", "name", "want"), [
    # Go has no "!" negation in classes: [!a] is the class of "!" and "a".
    ("[!a]", "!", True),
    ("[!a]", "a", True),
    ("[!a]", "b", False),
    ("[^a]", "b", True),
    ("[a-z]*.txt", "notes.txt", True),
    ("[a-z]*.txt", "Notes.txt", False),
    ("[ab]*", "apple", True),
    ("[ab]*", "cherry", False),
    ("*.txt", "sub/a.txt", False),  # * never crosses "/"
    ("dir/*/x", "dir/a/x", True),
    ("dir/*/x", "dir/a/b/x", False),
    # A class is not limited to one component in Go's Match.
    ("a[^x]b", "a/b", True),
    ("[z-a]", "m", False),  # a reversed range matches nothing, and is no error
    # Go's Match takes each chunk at its leftmost match and never backtracks: the star
    # cannot later give "?" back to let [^a] take the "/" (found by the property test below).
    ("*[^a]*", "?/", False),
])
def test_match_source_facts(pattern: str, name: str, want: bool) -> None:
    assert match_source(pattern, name) is want


@pytest.mark.parametrize(("text", "want"), [
    ("abc", False), ("a*", True), ("a?", True), ("a[b]", True), ("a\\*b", False),
    ("a\\[b", False), ("\\\\*", True),
])
def test_has_wildcards(text: str, want: bool) -> None:
    assert has_wildcards(text) is want


@pytest.mark.parametrize(("path", "want"), [
    ("dir/sub/*.txt", ("dir/sub", "*.txt")),
    ("a/*/b", ("a", "*/b")),
    ("*.txt", ("", "*.txt")),
    ("plain/path", ("plain/path", "")),
    ("a\\*b/c*", ("a\\*b", "c*")),
])
def test_split_wildcards(path: str, want: tuple[str, str]) -> None:
    assert split_wildcards(path) == want


@pytest.mark.parametrize(("pattern", "depth"), [
    ("*.txt", 0), ("*/x", 1), ("a/*/b/c", 3), ("a[^x]b", 1), ("a[/]b", 1), ("a[xy]b", 0),
])
def test_source_pattern_depth(pattern: str, depth: int) -> None:
    assert source_pattern_depth(pattern) == depth


# --- a port of Go's filepath.Match, as the oracle of a property test ---------------------------


# The oracle mirrors Go's control flow on purpose (so it can be checked against match.go line
# by line); hence the complexity exemptions.
def _go_match(pattern: str, name: str) -> bool | None:  # noqa: C901
    """path/filepath match.go Match, line by line; None for ErrBadPattern."""
    while pattern:
        star, chunk, pattern = _scan_chunk(pattern)
        if star and not chunk:
            return "/" not in name
        rest, ok, err = _match_chunk(chunk, name)
        if ok and (not rest or pattern):
            name = rest
            continue
        if err:
            return None
        if star:
            i, matched = 0, False
            while i < len(name) and name[i] != "/":
                rest, ok, err = _match_chunk(chunk, name[i + 1:])
                if ok:
                    if not pattern and rest:
                        i += 1
                        continue
                    name, matched = rest, True
                    break
                if err:
                    return None
                i += 1
            if matched:
                continue
        while pattern:
            _, chunk, pattern = _scan_chunk(pattern)
            if _match_chunk(chunk, "")[2]:
                return None
        return False
    return not name


def _scan_chunk(pattern: str) -> tuple[bool, str, str]:
    star = False
    while pattern and pattern[0] == "*":
        pattern, star = pattern[1:], True
    in_range, i = False, 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            i += 1
        elif ch == "[":
            in_range = True
        elif ch == "]":
            in_range = False
        elif ch == "*" and not in_range:
            break
        i += 1
    return star, pattern[:i], pattern[i:]


def _match_chunk(chunk: str, s: str) -> tuple[str, bool, bool]:  # noqa: C901
    failed = False
    while chunk:
        if not failed and not s:
            failed = True
        ch = chunk[0]
        if ch == "[":
            r = ""
            if not failed:
                r, s = s[0], s[1:]
            chunk = chunk[1:]
            negated = bool(chunk) and chunk[0] == "^"
            if negated:
                chunk = chunk[1:]
            match, nrange = False, 0
            while True:
                if chunk and chunk[0] == "]" and nrange > 0:
                    chunk = chunk[1:]
                    break
                lo, chunk, err = _get_esc(chunk)
                if err:
                    return "", False, True
                hi = lo
                if chunk[0] == "-":
                    hi, chunk, err = _get_esc(chunk[1:])
                    if err:
                        return "", False, True
                if lo <= r <= hi and r:
                    match = True
                nrange += 1
            if match == negated:
                failed = True
        elif ch == "?":
            if not failed:
                if s[0] == "/":
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
        elif ch == "\\":
            chunk = chunk[1:]
            if not chunk:
                return "", False, True
            if not failed:
                if chunk[0] != s[0]:
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
        else:
            if not failed:
                if ch != s[0]:
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
    if failed:
        return "", False, False
    return s, True, False


def _get_esc(chunk: str) -> tuple[str, str, bool]:
    if not chunk or chunk[0] in "-]":
        return "", chunk, True
    if chunk[0] == "\\":
        chunk = chunk[1:]
        if not chunk:
            return "", chunk, True
    r, chunk = chunk[0], chunk[1:]
    return r, chunk, not chunk


@pytest.mark.parametrize(("pattern", "name", "want"), GO_MATCH_TESTS)
def test_oracle_agrees_with_go_table(pattern: str, name: str, want: object) -> None:
    assert _go_match(pattern, name) == (None if want is BAD else want)


_GLOB_ATOMS = st.sampled_from(["a", "b", "/", "*", "?", "[ab]", "[^a]", "[a-b]", "\\*", "[", "]",
                               "-", "\\", "[!b]", "[/]", "**"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_GLOB_ATOMS, max_size=6).map("".join), st.text("ab/*-!", max_size=7))
def test_match_source_agrees_with_go_algorithm(pattern: str, name: str) -> None:
    want = _go_match(pattern, name)
    if want is None:
        with pytest.raises(PatternError):
            check_source_pattern(pattern)
    else:
        assert match_source(pattern, name) is want, (pattern, name)


# --- moby/patternmatcher --------------------------------------------------------------------

EXACT, INEXACT, FAIL = "exact", "inexact", "fail"

# patternmatcher_test.go TestMatches `tests`: (pattern, text, pass). "exact": the pattern
# matches the text itself (MatchesExact); "inexact": only through a parent directory
# (MatchesOrParentMatches); "fail": neither.
PM_MATCHES = [
    ("**", "file", EXACT), ("**", "file/", EXACT), ("**/", "file", EXACT),
    ("**/", "file/", EXACT), ("**", "/", EXACT), ("**/", "/", EXACT),
    ("**", "dir/file", EXACT), ("**/", "dir/file", EXACT), ("**", "dir/file/", EXACT),
    ("**/", "dir/file/", EXACT), ("**/**", "dir/file", EXACT), ("**/**", "dir/file/", EXACT),
    ("dir/**", "dir/file", EXACT), ("dir/**", "dir/file/", EXACT),
    ("dir/**", "dir/dir2/file", EXACT), ("dir/**", "dir/dir2/file/", EXACT),
    ("**/dir", "dir", EXACT), ("**/dir", "dir/file", INEXACT),
    ("**/dir2/*", "dir/dir2/file", EXACT), ("**/dir2/*", "dir/dir2/file/", INEXACT),
    ("**/dir2/**", "dir/dir2/dir3/file", EXACT), ("**/dir2/**", "dir/dir2/dir3/file/", EXACT),
    ("**file", "file", EXACT), ("**file", "dir/file", EXACT), ("**/file", "dir/file", EXACT),
    ("**file", "dir/dir/file", EXACT), ("**/file", "dir/dir/file", EXACT),
    ("**/file*", "dir/dir/file", EXACT), ("**/file*", "dir/dir/file.txt", EXACT),
    ("**/file*txt", "dir/dir/file.txt", EXACT), ("**/file*.txt", "dir/dir/file.txt", EXACT),
    ("**/file*.txt*", "dir/dir/file.txt", EXACT), ("**/**/*.txt", "dir/dir/file.txt", EXACT),
    ("**/**/*.txt2", "dir/dir/file.txt", FAIL), ("**/*.txt", "file.txt", EXACT),
    ("**/**/*.txt", "file.txt", EXACT), ("a**/*.txt", "a/file.txt", EXACT),
    ("a**/*.txt", "a/dir/file.txt", EXACT), ("a**/*.txt", "a/dir/dir/file.txt", EXACT),
    ("a/*.txt", "a/dir/file.txt", FAIL), ("a/*.txt", "a/file.txt", EXACT),
    ("a/*.txt**", "a/file.txt", EXACT), ("a[b-d]e", "ae", FAIL), ("a[b-d]e", "ace", EXACT),
    ("a[b-d]e", "aae", FAIL), ("a[^b-d]e", "aze", EXACT), (".*", ".foo", EXACT),
    (".*", "foo", FAIL), ("abc.def", "abcdef", FAIL), ("abc.def", "abc.def", EXACT),
    ("abc.def", "abcZdef", FAIL), ("abc?def", "abcZdef", EXACT), ("abc?def", "abcdef", FAIL),
    ("**/foo/bar", "foo/bar", EXACT), ("**/foo/bar", "dir/foo/bar", EXACT),
    ("**/foo/bar", "dir/dir2/foo/bar", EXACT), ("abc/**", "abc", FAIL),
    ("abc/**", "abc/def", EXACT), ("abc/**", "abc/def/ghi", EXACT), ("**/.foo", ".foo", EXACT),
    ("**/.foo", "bar.foo", FAIL), ("a(b)c/def", "a(b)c/def", EXACT),
    ("a(b)c/def", "a(b)c/xyz", FAIL), ("a.|)$(}+{bc", "a.|)$(}+{bc", EXACT),
    ("dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
     "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", EXACT),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", EXACT),
    # the non-Windows additions
    ("a\\\\", "a\\", EXACT), ("a\\*b", "a*b", EXACT),
]


@pytest.mark.parametrize(("pattern", "text", "kind"), PM_MATCHES)
def test_patternmatcher_table(pattern: str, text: str, kind: str) -> None:
    compiled = compile_pattern(pattern)
    assert compiled is not None
    assert compiled.match(text) is (kind == EXACT)  # MatchesExact
    assert PatternMatcher([pattern]).matches(text) is (kind != FAIL)  # MatchesOrParentMatches


# TestMatches `multiPatternTests`
@pytest.mark.parametrize(("patterns", "text", "want"), [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["**", "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"],
     "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    # the single-case tests at the top of patternmatcher_test.go
    (["*"], "fileutils.go", True),
    (["*.go"], "fileutils.go", True),
    (["!fileutils.go", "*.go"], "fileutils.go", True),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["*.go", "!fileutils.go"], "fileutils.go", False),
    (["*.go"], ".", False),  # the context root is never excluded
    ([], "/any/path/there", False),
])
def test_patternmatcher_multi(patterns: list[str], text: str, want: bool) -> None:
    assert PatternMatcher(patterns).matches(text) is want


# patternmatcher_test.go `matchTests` ("stolen from go's filepath Match tests"), run through
# Matches(s, [pattern]): note ("a*", "ab/c") is True here, through the parent "ab".
PM_GO_MATCH = [
    ("abc", "abc", True), ("*", "abc", True), ("*c", "abc", True), ("a*", "a", True),
    ("a*", "abc", True), ("a*", "ab/c", True), ("a*/b", "abc/b", True), ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True), ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False), ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True), ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True), ("ab[b-d]", "abc", True), ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False), ("ab[^b-d]", "abc", False), ("ab[^e-g]", "abc", True),
    ("a\\*b", "a*b", True), ("a\\*b", "ab", False), ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True), ("a???b", "a☺b", False), ("a[^a][^a][^a]b", "a☺b", False),
    ("[a-ζ]*", "α", True), ("*[a-ζ]", "A", False), ("a?b", "a/b", False), ("a*b", "a/b", False),
    ("[\\]a]", "]", True), ("[\\-]", "-", True), ("[x\\-]", "x", True), ("[x\\-]", "-", True),
    ("[x\\-]", "z", False), ("[\\-x]", "x", True), ("[\\-x]", "-", True), ("[\\-x]", "a", False),
    ("[]a]", "]", BAD), ("[-]", "-", BAD), ("[x-]", "x", BAD), ("[x-]", "-", BAD),
    ("[x-]", "z", BAD), ("[-x]", "x", BAD), ("[-x]", "-", BAD), ("[-x]", "a", BAD),
    ("\\", "a", BAD), ("[a-b-c]", "a", BAD), ("[", "a", BAD), ("[^", "a", BAD),
    ("[^bc", "a", BAD), ("a[", "a", BAD), ("a[", "ab", BAD), ("*x", "xxx", True),
]


@pytest.mark.parametrize(("pattern", "text", "want"), PM_GO_MATCH)
def test_patternmatcher_go_match_table(pattern: str, text: str, want: object) -> None:
    if want is BAD:
        with pytest.raises(PatternError):
            PatternMatcher([pattern])
    else:
        assert PatternMatcher([pattern]).matches(text) is want


# compileTests: the match kind decides semantics (e.g. "**file" is a suffix test).
@pytest.mark.parametrize(("pattern", "kind"), [
    ("*", "regexp"), ("file*", "regexp"), ("*file", "regexp"), ("a*/b", "regexp"),
    ("**", "suffix"), ("**/**", "regexp"), ("dir/**", "prefix"), ("**/dir", "suffix"),
    ("**/dir2/*", "regexp"), ("**/dir2/**", "regexp"), ("**file", "suffix"),
    ("**/file*txt", "regexp"), ("**/**/*.txt", "regexp"), ("a[b-d]e", "regexp"),
    (".*", "regexp"), ("abc.def", "exact"), ("abc?def", "regexp"), ("**/foo/bar", "suffix"),
    ("a(b)c/def", "exact"), ("a.|)$(}+{bc", "exact"),
    ("dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", "exact"),
])
def test_pattern_kind(pattern: str, kind: str) -> None:
    compiled = compile_pattern(pattern)
    assert compiled is not None and compiled.kind == kind


def test_suffix_kind_is_a_plain_suffix_test() -> None:
    # "**file" is patternmatcher's suffixMatch: HasSuffix, so "afile" matches too.
    assert PatternMatcher(["**file"]).matches("dir/afile")


def test_clean_patterns() -> None:
    # TestCleanPatterns*, TestSingleExclamationError
    assert len(PatternMatcher(["docs", "config", ""]).patterns) == 2
    assert PatternMatcher(["docs", "  !docs/README.md"]).has_exceptions
    assert PatternMatcher(["docs", "!docs/README.md  "]).has_exceptions
    with pytest.raises(PatternError):
        PatternMatcher(["!"])
    with pytest.raises(PatternError):
        PatternMatcher(["["])


def test_regexp_only_error_is_reported_at_construction() -> None:
    # patternmatcher accepts "[Local-Only]/" in New (filepath.Match allows the reversed range
    # l-O) and fails on every match with ErrBadPattern (moby/moby#52203); we fail at once.
    with pytest.raises(PatternError):
        PatternMatcher(["[Local-Only]/"])


@pytest.mark.parametrize(("pattern", "text"), [
    ("/build", "build"), ("./src/../build", "build"), ("node_modules/", "node_modules/x"),
    ("  spaced  ", "spaced"),
])
def test_patterns_are_cleaned(pattern: str, text: str) -> None:
    assert PatternMatcher([pattern]).matches(text)


def test_read_ignore_file_table() -> None:
    # ignorefile_test.go TestReadAll
    content = ("test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n"
               "! /inverted/abs/path\n!\n! ")
    assert read_ignore_file(content) == [
        "test1", "test2", "a/file/here", "lastfile", "!inverted/abs/path", "!", "!"]


def test_read_ignore_file_details() -> None:
    text = "\ufeff# comment\n  # not a comment once indented\n\tbuild/  \r\n!./keep//me\n"
    assert read_ignore_file(text) == ["# not a comment once indented", "build", "!keep/me"]


@pytest.mark.parametrize(("path", "want"), [
    ("", "."), ("a//b/./c/", "a/b/c"), ("//a", "/a"), ("a/../../b", "../b"), ("/..", "/"),
])
def test_clean_path_is_go_clean(path: str, want: str) -> None:
    assert clean_path(path) == want


# --- the brief's .dockerignore and pruning ----------------------------------------------------

IGNORE = ["**/*.log", "!keep.log", "/build", "node_modules/"]


@pytest.mark.parametrize(("path", "want"), [
    ("app.log", True), ("a/b/c.log", True), ("keep.log", False), ("sub/keep.log", True),
    ("build", True), ("build/out/x.o", True), ("src/build", False),
    ("node_modules", True), ("node_modules/pkg/index.js", True), ("web/node_modules", False),
    ("src/main.py", False),
])
def test_dockerignore_example(path: str, want: bool) -> None:
    assert PatternMatcher(IGNORE).matches(path) is want


@pytest.mark.parametrize(("patterns", "directory", "wholly"), [
    (IGNORE, "build", True),
    (IGNORE, "node_modules", True),
    (IGNORE, "src", False),  # not excluded at all
    (["build", "!build/keep.txt"], "build", False),
    (["build", "!build/keep.txt"], "build/other", True),
    (["build", "!**/keep.txt"], "build", False),
    (["build", "!build/*/keep"], "build", False),
    (["build", "!build/*/keep"], "build/a/b", True),
    (["build", "!build*"], "build", False),  # the exception matches the dir itself
    (["*", "!*/keep"], "a", False),
    (["*", "!*/keep"], "a/b", True),
    (["*", "!src/**"], "src", False),
    (["*", "!src/**"], "docs", True),
])
def test_excludes_dir_wholly(patterns: list[str], directory: str, wholly: bool) -> None:
    assert PatternMatcher(patterns).excludes_dir_wholly(directory) is wholly


# "a[^x]b": a negated class also matches "/" (in Go's regexp), so it matches "a/b".
_IGNORE_ATOMS = st.sampled_from(["a", "b", "keep", "*", "**", "?", "[ab]", "a*", "a[^x]b",
                                 "[^a]"])
_PATTERN = st.builds(
    lambda neg, parts: ("!" if neg else "") + "/".join(parts),
    st.booleans(), st.lists(_IGNORE_ATOMS, min_size=1, max_size=3))
_PATH = st.lists(st.sampled_from(["a", "b", "keep", "ab", "x"]), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PATTERN, min_size=1, max_size=4), _PATH, _PATH)
def test_pruning_never_drops_a_kept_path(patterns: list[str], directory: list[str],
                                         below: list[str]) -> None:
    matcher = PatternMatcher(patterns)
    dir_path = "/".join(directory)
    if matcher.excludes_dir_wholly(dir_path):
        assert matcher.matches(dir_path + "/" + "/".join(below))


def _matches_or_parent_matches(matcher: PatternMatcher, path: str) -> bool:
    """patternmatcher.MatchesOrParentMatches, naively: every pattern against the path and
    each parent directory, in order, with its skip rule."""
    matched = False
    parents = path.split("/")[:-1]
    for pattern in matcher.patterns:
        if pattern.exclusion != matched:
            continue
        hit = pattern.match(path) or any(
            pattern.match("/".join(parents[: i + 1])) for i in range(len(parents)))
        if hit:
            matched = not pattern.exclusion
    return matched


@settings(max_examples=300, deadline=None)
@given(st.lists(_PATTERN, min_size=1, max_size=4), _PATH)
def test_walk_state_agrees_with_patternmatcher(patterns: list[str], parts: list[str]) -> None:
    matcher = PatternMatcher(patterns)
    state = 0  # the root's state
    for i in range(len(parts)):
        path = "/".join(parts[: i + 1])
        excluded, state = matcher.step(state, path)
        assert excluded is _matches_or_parent_matches(matcher, path), path
        assert matcher.matches(path) is excluded


def test_negated_class_spans_directories() -> None:
    assert PatternMatcher(["a[^x]b"]).matches("a/b")
    assert PatternMatcher(["a[^x]b"]).matches("a/b/c")
    assert not PatternMatcher(["*", "!a[^x]b"]).excludes_dir_wholly("a")


def test_later_patterns_win_even_after_an_exception() -> None:
    # MatchesOrParentMatches keeps "a/keep" excluded; fsutil's MatchesUsingParentResults
    # would re-include it (documented in PatternMatcher's docstring).
    assert PatternMatcher(["a", "!a/keep", "a"]).matches("a/keep")
    assert not PatternMatcher(["a", "!a/keep"]).matches("a/keep")


def test_escape_is_literal_not_a_regexp_class() -> None:
    assert PatternMatcher(["a\\d"]).matches("ad")
    assert not PatternMatcher(["a\\d"]).matches("a1")


@pytest.mark.parametrize("char", sorted(set(string.punctuation) - set("*?[]\\!/")))
def test_punctuation_is_literal(char: str) -> None:
    assert PatternMatcher([f"x{char}y*"]).matches(f"x{char}yz")
    assert not PatternMatcher([f"x{char}y*"]).matches("xqyz")
