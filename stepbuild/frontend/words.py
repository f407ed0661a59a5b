"""Dockerfile words: quote removal, `$VAR` / `${VAR...}` substitution and word splitting.

This module owns the behaviour of BuildKit's `frontend/dockerfile/shell/lex.go` in normal mode
on Linux (variable names are case-sensitive), re-implemented from its documented and tested
behaviour. It is pure: no I/O and no process environment; callers pass the variables.

Every failure raises `ExpansionError` with no position; the caller knows where the word was.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from stepbuild.errors import ExpansionError

# Instructions whose arguments BuildKit expands (the Dockerfile reference's "Environment
# replacement" list, checked against buildkit's code). Not listed: RUN (only its --mount values
# are expanded; the command is left to the shell) and ONBUILD (its trigger is stored verbatim
# and expanded when it runs in a child build, as the instruction it then is).
EXPANDING_INSTRUCTIONS: frozenset[str] = frozenset(
    # frontend/dockerfile/instructions/commands.go: the commands with an `Expand` method
    {"add", "arg", "copy", "env", "label", "stopsignal", "user", "volume", "workdir"}
    # dockerfile2llb/convert.go expands these itself: FROM's base name and --platform (and
    # COPY --from) with the global ARGs only; EXPOSE with ProcessWords, so it word-splits
    | {"from", "expose"}
)

# Go's unicode.IsSpace (the Unicode White_Space property). str.isspace differs: it also
# accepts U+001C..U+001F, which BuildKit does not split on.
_SPACES = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000").union(
    map(chr, range(0x2000, 0x200B))
)
# POSIX special parameters `$@`, `$#`, `$$`, ...; `$0` is one too but is read as digits.
_SPECIAL_PARAMS = frozenset("@*#?-$!")
_EOS = "unexpected end of statement while looking for matching"


def _is_name_char(ch: str) -> bool:
    """Go's IsLetter/IsDigit (categories L*, Nd) or `_`: `$한국` is a valid variable name."""
    return ch.isalpha() or ch.isdecimal() or ch == "_"


@dataclass(frozen=True, slots=True)
class Expansion:
    """The result of expanding one word.

    `value` is the expanded word (not split); `words` is the same text split into words as
    `Lexer.process_words` would. `matched` holds the variables referenced and set (even if
    empty), `unmatched` those referenced but unset; BuildKit uses them for lint warnings.
    """

    value: str
    matched: frozenset[str]
    unmatched: frozenset[str]
    words: tuple[str, ...] = ()


class Lexer:
    """Expands words the way BuildKit does, for one escape character (`\\` or `` ` ``)."""

    def __init__(self, escape: str = "\\") -> None:
        if escape not in ("\\", "`"):
            raise ValueError(f"escape must be '\\' or '`', not {escape!r}")
        self.escape = escape

    def process_word(self, word: str, env: Mapping[str, str]) -> str:
        """Expand `word` as ONE word: quotes removed, variables substituted, no splitting."""
        return self._run(word, env).value

    def process_word_with_matches(self, word: str, env: Mapping[str, str]) -> Expansion:
        """Like `process_word`, also reporting which variables were referenced."""
        return self._run(word, env)

    def process_words(self, text: str, env: Mapping[str, str]) -> list[str]:
        """Expand `text` and split it on white space; text from quotes is never split."""
        return list(self._run(text, env).words)

    def _run(self, word: str, env: Mapping[str, str]) -> Expansion:
        run = _Expander(word, env, self.escape)
        failed = f"failed to process {json.dumps(word, ensure_ascii=False)}"
        try:
            value, words = run.until(None, raw=False)
        except ExpansionError as err:
            raise ExpansionError(f"{failed}: {err.message}") from None
        except RecursionError:  # Go has no depth limit; refuse rather than crash
            raise ExpansionError(f"{failed}: nested too deeply") from None
        return Expansion(value, frozenset(run.matched), frozenset(run.unmatched), tuple(words))


def expand(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Expand one word (see `Lexer.process_word`)."""
    return Lexer(escape).process_word(word, env)


def split_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Expand and split text into words (see `Lexer.process_words`)."""
    return Lexer(escape).process_words(text, env)


class _Cursor:
    """A read position in a string; `peek` and `take` return None at the end. Like Go's
    text/scanner, which BuildKit reads words with, it skips a byte-order mark at the start."""

    __slots__ = ("_text", "_pos")

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 1 if text.startswith("\ufeff") else 0

    def peek(self) -> str | None:
        return self._text[self._pos] if self._pos < len(self._text) else None

    def take(self) -> str | None:
        ch = self.peek()
        if ch is not None:
            self._pos += 1
        return ch


class _Words:
    """Collects split words: unquoted text breaks on white space, quoted text never does.
    A word that ends up empty (`""` alone) is dropped, as in BuildKit."""

    __slots__ = ("words", "_current")

    def __init__(self) -> None:
        self.words: list[str] = []
        self._current: list[str] = []

    def add_split(self, text: str) -> None:
        for ch in text:
            if ch not in _SPACES:
                self._current.append(ch)
            elif self._current:
                self._flush()

    def add_raw(self, text: str) -> None:
        if text:
            self._current.append(text)

    def finish(self) -> list[str]:
        if self._current:
            self._flush()
        return self.words

    def _flush(self) -> None:
        self.words.append("".join(self._current))
        self._current = []


class _Expander:
    """One pass over one word; tracks the variables it looked up."""

    def __init__(self, word: str, env: Mapping[str, str], escape: str) -> None:
        self.cur = _Cursor(word)
        self.env = env
        self.escape = escape
        # Inside `${v#p}`, `${v%p}` and `${v/p/r}` escape characters are kept, so that the
        # pattern compiler can tell a literal `\*` from a wildcard.
        self.raw = False
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()

    def until(self, stop: str | None, raw: bool) -> tuple[str, list[str]]:
        """Expand up to and including `stop` (None: the end); return the text and its words."""
        saved, self.raw = self.raw, raw
        try:
            return self._until(stop)
        finally:
            self.raw = saved

    def _until(self, stop: str | None) -> tuple[str, list[str]]:
        out: list[str] = []
        words = _Words()
        cur = self.cur
        while (ch := cur.peek()) is not None:
            if ch == stop:
                cur.take()
                return "".join(out), words.finish()
            if ch == "$":
                text = self.dollar()
                words.add_split(text)  # unquoted expansions are word-split
            elif ch in ("'", '"'):
                text = self.single_quote() if ch == "'" else self.double_quote()
                words.add_raw(text)
            else:
                cur.take()
                if ch == self.escape:
                    if self.raw:
                        out.append(ch)
                        words.add_raw(ch)
                    ch = cur.take()
                    if ch is None:  # a trailing lone escape character is dropped
                        break
                    words.add_raw(ch)  # an escaped space joins words
                else:
                    words.add_split(ch)
                text = ch
            out.append(text)
        if stop is not None:
            raise ExpansionError(f"{_EOS} {stop}")
        return "".join(out), words.finish()

    def single_quote(self) -> str:
        """Everything up to the next `'` is literal; there is no way to escape a `'`."""
        self.cur.take()
        chars: list[str] = []
        while (ch := self.cur.take()) != "'":
            if ch is None:
                raise ExpansionError(f"{_EOS} single-quote")
            chars.append(ch)
        return "".join(chars)

    def double_quote(self) -> str:
        """`$` expands; the escape character escapes only `"`, `$` and itself."""
        cur = self.cur
        cur.take()
        out: list[str] = []
        while (ch := cur.peek()) != '"':
            if ch is None:
                raise ExpansionError(f"{_EOS} double-quote")
            if ch == "$":
                out.append(self.dollar())
                continue
            cur.take()
            if ch == self.escape:
                # BuildKit quirk, kept: in raw mode an escape before an ordinary character is
                # written twice (`"\a"` gives `\\a` inside a pattern).
                if self.raw:
                    out.append(ch)
                if cur.peek() in ('"', "$", self.escape):
                    ch = cur.take() or ch
                elif cur.peek() is None:
                    continue  # the loop then reports the missing quote
            out.append(ch)
        cur.take()
        return "".join(out)

    def dollar(self) -> str:
        """Expand `$name`, `${name}` or `${name<op>...}`; a `$` before no name stays `$`."""
        cur = self.cur
        cur.take()
        if cur.peek() != "{":
            name = self.name()
            return self.lookup(name)[0] if name else "$"
        cur.take()
        first = cur.peek()
        if first is None:
            raise ExpansionError("syntax error: missing '}'")
        if first in ("{", "}", ":"):
            raise ExpansionError("syntax error: bad substitution")
        name = self.name()  # may be empty: `${.}` then fails as an unsupported modifier
        op = cur.take()
        if op == "}":
            return self.lookup(name)[0]
        if op == "/":
            return self.substitute(name)
        colon = op == ":"
        if colon:
            op = cur.take()
        return self.modifier(name, op, colon)

    def name(self) -> str:
        """Read a variable name: all leading digits, one special parameter, or a word."""
        first = self.cur.peek() or ""
        if first in _SPECIAL_PARAMS:
            return self.cur.take() or ""
        # Positional parameters are all the digits (Go's IsDigit): `$999aaa` is `${999}aaa`.
        accept = str.isdecimal if first.isdecimal() else _is_name_char
        chars: list[str] = []
        while (ch := self.cur.peek()) is not None and accept(ch):
            chars.append(ch)
            self.cur.take()
        return "".join(chars)

    def modifier(self, name: str, op: str | None, colon: bool) -> str:
        """`${v-w}` `${v+w}` `${v?w}` `${v#p}` `${v%p}`, and with `:`, `-` `+` `?` only."""
        shown = (":" if colon else "") + (op if op is not None else "\ufffd")
        is_pattern = op in ("#", "%")
        if (op not in ("-", "+", "?") and not is_pattern and not colon) or (colon and is_pattern):
            raise ExpansionError(f"unsupported modifier ({shown}) in substitution")
        word = self.word_until("}", is_pattern, "syntax error: missing '}'")
        value, is_set = self.lookup(name)
        empty = not is_set or (colon and value == "")  # `:` treats empty like unset
        if op == "-":
            return word if empty else value
        if op == "+":
            return "" if empty else word
        if op == "?":
            if empty:
                default = "is not allowed to be " + ("empty" if is_set else "unset")
                raise ExpansionError(f"{name}: {word or default}")
            return value
        if is_pattern:
            # `##` / `%%` are seen on the *expanded* word, so `${v#$P}` with P=#x is greedy.
            greedy = word[:1] == op
            if greedy:
                word = word[1:]
            trim = _trim_suffix if op == "%" else _trim_prefix
            return trim(word, value, greedy)
        raise ExpansionError(f"unsupported modifier ({shown}) in substitution")

    def substitute(self, name: str) -> str:
        """`${v/p/r}` replaces the leftmost match of p (stars greedy), `${v//p/r}` every one."""
        every = self.cur.peek() == "/"
        if every:
            self.cur.take()
        pattern = self.word_until("/", True, "syntax error: missing '/' in ${}")
        replacement = self.word_until("}", True, "syntax error: missing '}'")
        value, _ = self.lookup(name)
        regex = _glob_regex(pattern, greedy=True)
        if every:
            return _replace_all(regex, value, replacement)
        match = regex.search(value)  # a single replacement is inserted literally
        if match is None:
            return value
        return value[: match.start()] + replacement + value[match.end() :]

    def word_until(self, stop: str, raw: bool, missing: str) -> str:
        """The argument of a `${...}` operator; running out of input reports `missing`."""
        try:
            return self.until(stop, raw)[0]
        except ExpansionError:
            if self.cur.peek() is None:
                raise ExpansionError(missing) from None
            raise

    def lookup(self, name: str) -> tuple[str, bool]:
        if name in self.env:
            self.matched.add(name)
            return self.env[name], True
        self.unmatched.add(name)
        return "", False


# Shell patterns: `*` any run, `?` one character, `\` escapes `*`, `?` and `\`; no `[...]`.
# As in BuildKit they become Go regular expressions, whose `.` does not match a newline and
# whose matching is leftmost-first, like Python's `re` on these simple patterns.


def _glob_regex(pattern: str, greedy: bool) -> re.Pattern[str]:
    star = ".*" if greedy else ".*?"
    cur = _Cursor(pattern)  # BuildKit scans patterns with text/scanner too (BOM skip)
    parts: list[str] = []
    while (tok := cur.take()) is not None:
        if tok == "*":
            parts.append(star)
        elif tok == "?":
            parts.append(".")
        elif tok == "\\" and cur.peek() in ("}", "/"):
            continue  # that escape only protected the ${...} syntax; the char is literal
        elif tok == "\\":
            tok = cur.take()
            if tok is None or tok not in ("*", "?", "\\"):
                raise ExpansionError(
                    f"invalid pattern ({pattern}) in substitution: invalid escape '\\{tok or ''}'"
                )
            parts.append(re.escape(tok))
        else:
            parts.append(re.escape(tok))
    return re.compile("".join(parts))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    match = _glob_regex(pattern, greedy).match(value)
    return value[match.end() :] if match else value


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # A regex cannot find the shortest rightmost match, so match the reversed pattern
    # (keeping `\x` pairs intact) at the start of the reversed value.
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


def _reverse_pattern(pattern: str) -> str:
    units: list[str] = []
    i = 0
    while i < len(pattern):
        step = 2 if pattern[i] == "\\" and i + 1 < len(pattern) else 1
        units.append(pattern[i : i + step])
        i += step
    return "".join(reversed(units))


def _replace_all(regex: re.Pattern[str], value: str, template: str) -> str:
    """Go's Regexp.ReplaceAllString: unlike re.sub, an empty match right after a match is
    not replaced, and the replacement is a template in which `$0` is the match."""
    out: list[str] = []
    last = pos = 0
    while pos <= len(value) and (match := regex.search(value, pos)) is not None:
        out.append(value[last : match.start()])
        if match.end() > last or match.start() == 0:
            out.append(_expand_template(template, match.group()))
        last = match.end()
        pos = max(pos + 1, match.end())
    out.append(value[last:])
    return "".join(out)


def _expand_template(template: str, whole: str) -> str:
    """Go's Regexp.Expand for a regex without groups: `$$` is `$`, `$0`/`${0}` the match,
    any other well-formed `$name`/`${name}` is empty, a malformed one stays literal."""
    out: list[str] = []
    i = 0
    while (dollar := template.find("$", i)) >= 0:
        out.append(template[i:dollar])
        i = dollar + 1
        if template.startswith("$", i):
            out.append("$")
            i += 1
            continue
        brace = template.startswith("{", i)
        end = start = i + brace
        while end < len(template) and _is_name_char(template[end]):
            end += 1
        if end == start or (brace and not template.startswith("}", end)):
            out.append("$")
            continue
        if template[start:end] == "0":
            out.append(whole)
        i = end + brace
    out.append(template[i:])
    return "".join(out)
