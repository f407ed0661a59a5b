"""Docker's path patterns: COPY/ADD source wildcards and the .dockerignore / --exclude language.

This module owns two pattern languages, re-implemented from their upstream code and test tables
(read for facts; the code here is our own):

* COPY/ADD source wildcards are Go's `filepath.Match`, applied by BuildKit to each path under
  the wildcard's fixed parent directory (tonistiigi/fsutil copy/copy.go: `splitWildcards`,
  `resolveWildcards`). `*` and `?` never match "/", a class is `[a-z]` / `[^a-z]` (Go has no
  `[!a]` negation: `[!a]` is the class of "!" and "a"), `\\` escapes the next character.
* .dockerignore and `COPY --exclude` patterns are moby/patternmatcher: `**` matches any number
  of directories, `!` marks an exception that re-includes, patterns are `filepath.Clean`-ed,
  a pattern that matches a directory matches everything under it, and the last pattern that
  matches a path decides.

Pure functions and frozen values: no I/O, no process state. Malformed patterns raise
`PatternError` (a `ValueError`); callers turn it into their own error with context.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# BuildKit's containsWildcards (fsutil copy/copy.go, dockerfile2llb convert_copy.go): these
# start a wildcard unless escaped by a backslash.
_WILDCARD_CHARS = "*?["


class PatternError(ValueError):
    """A pattern is malformed (Go's filepath.ErrBadPattern, or patternmatcher's "!" alone)."""


# --- Go filepath.Match ---------------------------------------------------------------------


def has_wildcards(component: str) -> bool:
    """Whether a path component holds an unescaped `*`, `?` or `[` (BuildKit containsWildcards)."""
    i = 0
    while i < len(component):
        ch = component[i]
        if ch == "\\":
            i += 2
            continue
        if ch in _WILDCARD_CHARS:
            return True
        i += 1
    return False


def split_wildcards(path: str) -> tuple[str, str]:
    """Split a cleaned relative path into its fixed part and the rest from the first wildcard.

    `dir/sub/*.txt` -> ("dir/sub", "*.txt"); `a/*/b` -> ("a", "*/b"); no wildcard -> (path, "").
    Mirrors fsutil's splitWildcards, which walks the fixed part and matches the rest.
    """
    parts = path.split("/")
    for i, part in enumerate(parts):
        if has_wildcards(part):
            return "/".join(parts[:i]), "/".join(parts[i:])
    return path, ""


def match_source(pattern: str, path: str) -> bool:
    """Whether a COPY/ADD source wildcard matches a relative path (Go `filepath.Match`).

    A malformed pattern matches nothing, as in BuildKit (`match, _ := filepath.Match(...)`);
    use `check_source_pattern` to report it instead.
    """
    try:
        glob = _compile_glob(pattern)
    except PatternError:
        return False
    return glob.match(path)


def check_source_pattern(pattern: str) -> None:
    """Raise PatternError if `pattern` is not valid `filepath.Match` syntax."""
    _compile_glob(pattern)


def source_pattern_depth(pattern: str) -> int:
    """How many "/" a path matched by `pattern` can contain, at most (for pruning a walk).

    Usually the number of "/" in the pattern, but a class such as `[^a]` also matches "/" in
    Go's Match (classes are not limited to one component), and so adds one.
    """
    return _compile_glob(pattern).slashes


@dataclass(frozen=True, slots=True)
class _Glob:
    """A filepath.Match pattern cut into chunks as Go's scanChunk does: each chunk is the
    text up to the next `*` outside a class, compiled to a fixed-length regexp, with whether
    stars came before it. An empty trailing chunk after stars is None."""

    chunks: tuple[tuple[bool, re.Pattern[str] | None], ...]
    slashes: int

    def match(self, name: str) -> bool:
        """Go's Match loop: each chunk at its leftmost position, never backtracking.

        A regexp over the whole pattern would backtrack and differ when a class can match
        "/" ("*[^a]*" does not match "?/" in Go).
        """
        pos, last = 0, len(self.chunks) - 1
        for k, (star, chunk) in enumerate(self.chunks):
            if chunk is None:  # trailing star: the rest, unless it holds a "/"
                return "/" not in name[pos:]
            m = chunk.match(name, pos)
            if m and (k < last or m.end() == len(name)):
                pos = m.end()
                continue
            if not star:
                return False
            pos = _skip_to_chunk(chunk, name, pos, k == last)
            if pos < 0:
                return False
        return pos == len(name)


def _skip_to_chunk(chunk: re.Pattern[str], name: str, pos: int, last: bool) -> int:
    """Where `chunk` ends when a star first skips name[pos..i] (never a "/"); -1 if nowhere."""
    i = pos
    while i < len(name) and name[i] != "/":
        m = chunk.match(name, i + 1)
        if m and (not last or m.end() == len(name)):
            return m.end()
        i += 1
    return -1


@functools.lru_cache(maxsize=512)
def _compile_glob(pattern: str) -> _Glob:
    # Cached because a wildcard is matched against every path under its parent directory;
    # the cache holds only immutable compiled values.
    chunks: list[tuple[bool, re.Pattern[str] | None]] = []
    slashes, i, n = 0, 0, len(pattern)
    while i < n:
        star = pattern[i] == "*"
        while i < n and pattern[i] == "*":
            i += 1
        if i >= n:
            chunks.append((True, None))
            break
        out: list[str] = []
        while i < n and pattern[i] != "*":
            atom, i, can_slash = _glob_atom(pattern, i)
            out.append(atom)
            slashes += can_slash
        chunks.append((star, re.compile("".join(out), re.DOTALL)))
    return _Glob(tuple(chunks), slashes)


def _glob_atom(pattern: str, i: int) -> tuple[str, int, bool]:
    """One single-character element of a chunk: (regexp, next index, can it match "/")."""
    ch = pattern[i]
    if ch == "?":
        return "[^/]", i + 1, False
    if ch == "[":
        return _parse_class(pattern, i, strict_ranges=False)
    if ch == "\\":
        if i + 1 >= len(pattern):
            raise PatternError(f"trailing backslash in pattern {pattern!r}")
        i += 1
        ch = pattern[i]
    return re.escape(ch), i + 1, ch == "/"


def _parse_class(pattern: str, start: int, *, strict_ranges: bool) -> tuple[str, int, bool]:
    """Parse `[...]` at `start` with Go Match rules; return (regex, index after, can match "/").

    Go (path/filepath match.go, matchChunk/getEsc): `^` right after `[` negates; a member is a
    character or `\\c`, optionally `lo-hi`; an unescaped `-` or `]` cannot start a member, so
    `[]a]`, `[-]`, `[x-]` and `[a-b-c]` are errors, as is an unterminated class. A reversed
    range (`[z-a]`) matches nothing in Go's Match; patternmatcher hands the class to Go's
    regexp, which rejects it, so ignore patterns pass strict_ranges=True.
    """
    i = start + 1
    negated = i < len(pattern) and pattern[i] == "^"
    i += negated
    ranges: list[tuple[str, str]] = []
    while True:
        if i < len(pattern) and pattern[i] == "]" and ranges:
            i += 1
            break
        lo, i = _class_char(pattern, i)
        hi = lo
        if pattern[i] == "-":  # _class_char guarantees a character follows
            hi, i = _class_char(pattern, i + 1)
        if lo > hi and strict_ranges:
            raise PatternError(f"invalid character class range {lo}-{hi} in {pattern!r}")
        ranges.append((lo, hi))
    valid = [(lo, hi) for lo, hi in ranges if lo <= hi]
    has_slash = any(lo <= "/" <= hi for lo, hi in valid)
    if not valid:
        # Only reversed ranges: nothing is in the class.
        return ("[\\s\\S]" if negated else "(?!)"), i, negated
    body = "".join(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}"
                   for lo, hi in valid)
    return f"[{'^' if negated else ''}{body}]", i, has_slash != negated


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    if i >= len(pattern) or pattern[i] in "-]":
        raise PatternError(f"bad character class in pattern {pattern!r}")
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise PatternError(f"bad escape in character class of {pattern!r}")
    ch = pattern[i]
    i += 1
    if i >= len(pattern):  # Go getEsc: nothing may end right after a member: unterminated
        raise PatternError(f"unterminated character class in pattern {pattern!r}")
    return ch, i


# --- moby/patternmatcher -------------------------------------------------------------------


def clean_path(path: str) -> str:
    """Go's `filepath.Clean` for "/"-separated paths (posixpath.normpath keeps a leading "//")."""
    cleaned = posixpath.normpath(path) if path else "."
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def read_ignore_file(text: str) -> list[str]:
    """The patterns of a .dockerignore file, as Docker reads them (patternmatcher ignorefile).

    A UTF-8 BOM is dropped; a line starting with "#" (before trimming) is a comment; lines are
    trimmed and blank ones skipped; "!" and the rest are trimmed separately; the pattern is
    cleaned and a leading "/" removed ("/foo" and "foo" mean the same).
    """
    patterns = []
    for line in text.removeprefix("\ufeff").splitlines():
        if line.startswith("#"):
            continue
        line = line.strip()
        if not line:
            continue
        invert = line.startswith("!")
        if invert:
            line = line[1:].strip()
        if line:
            line = clean_path(line)
            if len(line) > 1 and line.startswith("/"):
                line = line[1:]
        patterns.append("!" + line if invert else line)
    return patterns


@dataclass(frozen=True, slots=True)
class Pattern:
    """One compiled ignore pattern. `kind` mirrors patternmatcher's matchType, which decides
    the semantics as much as the regexp does (e.g. `**file` is a suffix test: it matches
    "afile" although its regexp would not)."""

    text: str  # the cleaned pattern, without "!"
    exclusion: bool  # True for "!pattern": an exception that re-includes
    kind: str  # "exact" | "prefix" | "suffix" | "regexp"
    regex: re.Pattern[str] | None
    # Whether a bracket class can match "/" ("[^x]" can: Go's regexp classes are not limited
    # to one component), which defeats reasoning segment by segment.
    slash_class: bool = False

    @property
    def depth(self) -> int | None:
        """The number of "/" in every path this pattern matches; None if it varies."""
        if self.kind == "exact":
            return self.text.count("/")
        if self.kind != "regexp" or "**" in self.text or self.slash_class:
            return None
        segments = _split_segments(self.text)
        return None if segments is None else len(segments) - 1

    @property
    def test(self) -> Callable[[str], object]:
        """`match` as the cheapest callable for this kind (truthy result = match)."""
        if self.kind == "exact":
            return self.text.__eq__
        if self.kind == "regexp":
            assert self.regex is not None
            return self.regex.fullmatch
        return self.match

    def match(self, path: str) -> bool:
        """Whether this pattern matches `path` itself (no parent-directory matching)."""
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":  # "dir/**": anything starting with "dir/"
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":  # "**/foo" or "**foo": anything ending so
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix[:1] == "/" and path == suffix[1:])
        assert self.regex is not None
        return self.regex.fullmatch(path) is not None

    def could_match_below(self, dir_path: str) -> bool:
        """Whether some path strictly under `dir_path` could match (True when unsure)."""
        below = dir_path + "/"
        if self.kind == "exact":
            return self.text.startswith(below)
        if self.kind == "prefix":
            prefix = self.text[:-2]
            return below.startswith(prefix) or prefix.startswith(below)
        if self.kind == "suffix" or "**" in self.text or self.slash_class:
            return True
        return _segments_could_match_below(self.text, dir_path)


def _segments_could_match_below(text: str, dir_path: str) -> bool:
    # A regexp pattern without "**": its i-th "/"-segment must match the i-th component of
    # every path it matches, and it must have more segments than dir_path has components.
    segments = _split_segments(text)
    if segments is None:
        return True  # a class or escape holds "/": do not try to be clever
    components = dir_path.split("/")
    if len(segments) <= len(components):
        return False
    try:
        return all(_compile_glob(seg).match(comp)
                   for seg, comp in zip(segments, components, strict=False))
    except PatternError:
        return True


def _split_segments(text: str) -> list[str] | None:
    """Split on "/" outside classes and escapes; None if a class or escape contains "/"."""
    segments, current, in_class, i = [], [], False, 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            if text[i + 1] == "/":
                return None
            current.append(text[i:i + 2])
            i += 2
            continue
        if ch == "/":
            if in_class:
                return None
            segments.append("".join(current))
            current = []
        else:
            in_class = (in_class and ch != "]") or (not in_class and ch == "[")
            current.append(ch)
        i += 1
    segments.append("".join(current))
    return segments


def compile_pattern(raw: str) -> Pattern | None:
    """Compile one ignore pattern as patternmatcher.New does; None for a blank one.

    Differences from patternmatcher, all deliberate: "!" is split off before cleaning (so
    "!a/../b" stays an exception) and a leading "/" is dropped here too, not only by the
    .dockerignore reader, so `COPY --exclude=/build` means "build"; `\\c` is the literal c
    (patternmatcher writes `\\c` into a Go regexp, where `\\d` would be a digit class); a
    bracket class is read with filepath.Match rules, as patternmatcher validates it.
    """
    text = raw.strip()
    if not text:
        return None
    exclusion = text.startswith("!")
    if exclusion:
        text = text[1:].strip()
        if not text:
            raise PatternError('illegal exclusion pattern: "!"')
    text = clean_path(text)
    if len(text) > 1 and text.startswith("/"):
        text = text[1:]
    check_source_pattern(text)  # patternmatcher.New: filepath.Match(p, ".") must not fail
    kind, regex, slash_class = _compile_ignore(text)
    return Pattern(text, exclusion, kind, regex, slash_class)


def _compile_ignore(text: str) -> tuple[str, re.Pattern[str] | None, bool]:
    """patternmatcher's Pattern.compile: the match kind, for "regexp" the expression, and
    whether a class in it can match "/"."""
    out: list[str] = []
    kind, slash_class = "exact", False
    i, n = 0, len(text)
    while i < n:
        start, ch = i, text[i]
        if ch == "*" and i + 1 < n and text[i + 1] == "*":
            i += 2
            if i < n and text[i] == "/":  # "**/" is read as "**"
                i += 1
            if i >= n:  # "**" at the end matches everything below, like .gitignore
                if kind == "exact":
                    kind = "prefix"
                else:
                    out.append(".*")
                    kind = "regexp"
            else:  # any number of directories, even none
                out.append("(?:.*/)?")
                kind = "regexp"
            if start == 0:
                kind = "suffix"
            continue
        if ch == "*":
            out.append("[^/]*")
            kind = "regexp"
        elif ch == "?":
            out.append("[^/]")
            kind = "regexp"
        elif ch == "[":
            regex, i, can_slash = _parse_class(text, i, strict_ranges=True)
            slash_class |= can_slash
            out.append(regex)
            kind = "regexp"
            continue
        elif ch == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(text[i]))
            kind = "regexp"
        else:
            out.append(re.escape(ch))
        i += 1
    if kind != "regexp":
        return kind, None, False
    return kind, re.compile("".join(out)), slash_class


# Which patterns matched a path or one of its parent directories, as a bit mask (bit i for
# pattern i); 0 for the context root. A walk carries it down, so each pattern is tested once
# per path rather than once per parent; the highest set bit is the last applying pattern.
MatchState = int


class PatternMatcher:
    """The .dockerignore / `COPY --exclude` language over "/"-separated relative paths.

    `matches(path)` is patternmatcher's MatchesOrParentMatches: a pattern applies to a path
    when it matches the path or any parent directory of it, and the last applying pattern
    decides (an exclusion excludes, an exception re-includes). A walk uses `step` from the
    root's state 0 (or `start` for a path reached directly) to get the same answer.

    (fsutil's context walker uses MatchesUsingParentResults, which skips a pattern at a
    directory once the answer there is already what the pattern would set, and so can forget
    it for the children: with ["a", "!a/keep", "a"] it keeps "a/keep", which the rule above,
    and the reference's "later patterns win", exclude. We follow the documented rule.)
    """

    __slots__ = ("patterns", "has_exceptions", "_excluding", "_tests")

    def __init__(self, patterns: Sequence[str]) -> None:
        compiled = (compile_pattern(p) for p in patterns)
        self.patterns: tuple[Pattern, ...] = tuple(p for p in compiled if p is not None)
        self.has_exceptions = any(p.exclusion for p in self.patterns)
        self._excluding = tuple(not p.exclusion for p in self.patterns)
        self._tests = _tests_by_depth(self.patterns)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, path: str) -> bool:
        """Whether `path` is excluded (matched, and not re-included by a later exception).

        `path` is relative and "/"-separated, as a walk produces it; "." (the context root)
        is never excluded ("Don't let them exclude everything", patternmatcher).
        """
        return self.start(path)[0]

    def excludes_dir_wholly(self, dir_path: str) -> bool:
        """Whether `dir_path` and everything under it is excluded, so a walk can skip it.

        True when the directory matches and no exception could match anything inside it
        (an exception matching the directory itself or a parent applies to its children
        exactly as to it, so only exceptions reaching strictly below it matter).
        """
        return self.matches(dir_path) and not self.may_reinclude_below(dir_path)

    def may_reinclude_below(self, dir_path: str) -> bool:
        """Whether an exception could re-include something strictly under `dir_path`."""
        return self.has_exceptions and any(
            p.exclusion and p.could_match_below(dir_path) for p in self.patterns)

    def start(self, path: str) -> tuple[bool, MatchState]:
        """(excluded?, state) for a path reached without a walk: tests it and its parents."""
        excluded, state, prefix = False, 0, ""
        if path in ("", "."):
            return False, state  # the root itself: never excluded
        for component in path.split("/"):
            prefix = f"{prefix}/{component}" if prefix else component
            excluded, state = self.step(state, prefix)
        return excluded, state

    def step(self, parent: MatchState, path: str) -> tuple[bool, MatchState]:
        """(excluded?, state) for `path`, given the state of its parent directory."""
        tests = self._tests
        state = parent
        for bit, test in tests[min(path.count("/"), len(tests) - 1)]:
            if not state & bit and test(path):
                state |= bit
        return bool(state) and self._excluding[state.bit_length() - 1], state


_Test = Callable[[str], object]


def _tests_by_depth(patterns: Sequence[Pattern]) -> tuple[tuple[tuple[int, _Test], ...], ...]:
    """For each path depth (number of "/"), the (bit, test) of the patterns that can match a
    path that deep; the last row serves all deeper paths. A pattern such as "build" or
    "src/*.py" matches paths of one depth only, so it is not even tried elsewhere."""
    depths = [p.depth for p in patterns]
    rows = max((d for d in depths if d is not None), default=-1) + 2
    return tuple(
        tuple((1 << i, p.test) for i, (p, d) in enumerate(zip(patterns, depths, strict=True))
              if d is None or d == row)
        for row in range(rows))
