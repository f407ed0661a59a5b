"""The syntax tree of a Stepfile, at the level of BuildKit's parser.Node.

A `Node` is one instruction as written: the keyword, the flags as written (quotes removed, not
yet checked against the instruction), the arguments split by the instruction's line parser,
heredoc bodies and the source lines it spans. Unknown keywords are kept here; they are refused
when nodes become typed instructions (`convert.py`). `dump()` renders BuildKit's AST dump
format, which the conformance suite compares against.

The per-instruction argument splitting ("line parsers") lives here and mirrors BuildKit's
`line_parsers.go`; the rules are described in the conformance README. No I/O here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stepbuild.frontend.lines import Directive

# Which instructions may carry heredocs (BuildKit: heredocDirectives / heredocCompoundDirectives).
HEREDOC_INSTRUCTIONS = frozenset({"add", "copy", "run"})

_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
_HEREDOC_WORD = re.compile(r"(\d*)<<(-?)([^<]*)\Z", re.DOTALL)


class ArgumentError(ValueError):
    """A line parser refused the arguments; `offset` is where in the argument text."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Heredoc:
    """A heredoc attached to an instruction: `<<[-]NAME` and its body.

    `expand` is False when any part of the delimiter word was quoted; `chomp` is True for `<<-`
    (leading tabs of the body are stripped when it is used, not here); `fd` is N in `N<<EOF`.
    """

    name: str
    content: str = ""
    expand: bool = True
    chomp: bool = False
    fd: int = 0


@dataclass(frozen=True, slots=True)
class Node:
    """One instruction as parsed, before its flags and arguments are checked.

    `keyword` is lower case; `args` are the arguments after the instruction's line parser;
    `is_json` says the arguments came from a JSON array (exec form); `trigger` is the wrapped
    instruction of an ONBUILD; `original` is the logical line as written (continuations joined).
    """

    keyword: str
    flags: tuple[str, ...]
    args: tuple[str, ...]
    start_line: int
    end_line: int
    column: int = 1
    original: str = ""
    is_json: bool = False
    trigger: Node | None = None
    heredocs: tuple[Heredoc, ...] = field(default=())
    keyword_text: str = ""

    def can_contain_heredoc(self) -> bool:
        """Heredocs follow a non-JSON RUN, COPY or ADD, also as an ONBUILD trigger."""
        node = self.trigger if self.keyword == "onbuild" and self.trigger else self
        return node.keyword in HEREDOC_INSTRUCTIONS and not node.is_json

    def dump(self) -> str:
        """BuildKit's `Node.Dump()` of this instruction: `(run ["--flag"] "arg")`."""
        parts = [self.keyword]
        if self.flags:
            parts.append("[" + " ".join(go_quote(f) for f in self.flags) + "]")
        if self.trigger is not None:
            parts.append(self.trigger.dump())
        parts.extend(go_quote(a) for a in self.args)
        return "(" + " ".join(parts) + ")"


def dump(nodes: list[Node]) -> str:
    """The whole file in BuildKit's AST dump format, one instruction per line."""
    return "".join(node.dump() + "\n" for node in nodes)


def go_quote(text: str) -> str:
    """Go's strconv.Quote, so that dumps compare byte for byte with BuildKit's."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif ch == " " or ch.isprintable():
            out.append(ch)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


_GO_ESCAPES = {
    '"': '\\"', "\\": "\\\\", "\a": "\\a", "\b": "\\b",
    "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
}


# --- flags -------------------------------------------------------------------------------


def unquote_flag(word: str) -> str:
    """A flag word as BuildKit keeps it: quotes removed, a backslash escapes the next char."""
    out = []
    quote = ""
    i = 0
    while i < len(word):
        ch = word[i]
        if ch == "\\" and i + 1 < len(word):
            i += 1
            out.append(word[i])
        elif ch == "\\":
            pass  # a backslash at the very end is dropped
        elif quote and ch == quote:
            quote = ""
        elif not quote and ch in "'\"":
            quote = ch
        else:
            out.append(ch)
        i += 1
    return "".join(out)


# --- line parsers: argument text → argument list -------------------------------------------

LineParser = Callable[[str, str], tuple[tuple[str, ...], bool]]


def parse_arguments(keyword: str, rest: str, escape: str) -> tuple[tuple[str, ...], bool]:
    """Split the argument text of `keyword`; return (args, is_json). Raises ArgumentError."""
    parser = _LINE_PARSERS.get(keyword, _ignore)
    return parser(rest, escape)


def _ignore(rest: str, escape: str) -> tuple[tuple[str, ...], bool]:
    # Unknown instructions keep one empty argument in BuildKit's tree (its parseIgnore returns
    # an empty node, dumped as ""); they are refused when converted to instructions.
    return ("",), False


def _string(rest: str, escape: str) -> tuple[tuple[str, ...], bool]:
    return ((rest,) if rest else ()), False


def _whitespace_words(rest: str, escape: str) -> tuple[tuple[str, ...], bool]:
    return (tuple(_WHITESPACE.split(rest)) if rest else ()), False


def parse_json_array(rest: str) -> list[str] | None:
    """The strings of a JSON array, or None when `rest` is not JSON (so: shell form).

    A JSON array with a non-string element is an error, not shell form (BuildKit's rule).
    """
    text = rest.lstrip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None  # not JSON (Go's decoder also gives up on absurd nesting): shell form
    if not isinstance(value, list):
        return None
    if not all(isinstance(item, str) for item in value):
        raise ArgumentError(
            "when using JSON array syntax, arrays must be comprised of strings only"
        )
    return value


def _maybe_json(rest: str, escape: str) -> tuple[tuple[str, ...], bool]:
    if not rest:
        return (), False
    items = parse_json_array(rest)
    if items is not None:
        return tuple(items), True
    return (rest,), False


def _maybe_json_list(rest: str, escape: str) -> tuple[tuple[str, ...], bool]:
    items = parse_json_array(rest)
    if items is not None:
        return tuple(items), True
    return _whitespace_words(rest, escape)


def _healthcheck(rest: str, escape: str) -> tuple[tuple[str, ...], bool]:
    parts = rest.split(None, 1)
    if not parts:
        return (), False
    command, is_json = _maybe_json(parts[1] if len(parts) > 1 else "", escape)
    return (parts[0], *command), is_json


def _name_or_name_value(rest: str, escape: str) -> tuple[tuple[str, ...], bool]:
    return tuple(split_words_keeping_quotes(rest, escape)), False


def _name_value(keyword: str) -> LineParser:
    def parse(rest: str, escape: str) -> tuple[tuple[str, ...], bool]:
        words = split_words_keeping_quotes(rest, escape)
        if not words:
            return (), False
        if "=" not in words[0]:
            # Legacy form `ENV KEY rest of line`: the key, then the raw rest as one value.
            parts = _WHITESPACE.split(rest, maxsplit=1)
            if len(parts) < 2:
                raise ArgumentError(f"{keyword.upper()} must have two arguments")
            return (parts[0], parts[1], ""), False
        args: list[str] = []
        for word in words:
            if "=" not in word:
                raise ArgumentError(
                    f"Syntax error - can't find = in {word!r}. Must be of the form: name=value",
                    rest.find(word),
                )
            key, value = word.split("=", 1)
            args += [key, value, "="]
        return tuple(args), False

    return parse


_LINE_PARSERS: dict[str, LineParser] = {
    "add": _maybe_json_list,
    "arg": _name_or_name_value,
    "cmd": _maybe_json,
    "copy": _maybe_json_list,
    "entrypoint": _maybe_json,
    "env": _name_value("env"),
    "expose": _whitespace_words,
    "from": _whitespace_words,
    "healthcheck": _healthcheck,
    "label": _name_value("label"),
    "maintainer": _string,
    "run": _maybe_json,
    "shell": _maybe_json,
    "stopsignal": _string,
    "user": _string,
    "volume": _maybe_json_list,
    "workdir": _string,
}


def split_words_keeping_quotes(rest: str, escape: str) -> list[str]:
    """Split on whitespace outside quotes, keeping quotes and escapes (BuildKit parseWords).

    Quotes and escapes are removed later, when the words are expanded (`words.py`).
    """
    words: list[str] = []
    word: list[str] = []
    quote = ""
    blank_ok = False
    in_word = False
    i = 0
    while i < len(rest):
        ch = rest[i]
        if not in_word and not quote:
            if ch.isspace():
                i += 1
                continue
            in_word = True
        if not quote and ch.isspace():
            if blank_ok or word:
                words.append("".join(word))
            word, blank_ok, in_word = [], False, False
        elif ch == escape and (not quote or quote == '"'):
            if i + 1 < len(rest):
                word.append(ch)
                i += 1
                word.append(rest[i])
            elif quote:
                quote = ""  # an escape at the very end closes the quote (BuildKit does so)
        else:
            if quote and ch == quote:
                quote = ""
            elif not quote and ch in "'\"":
                quote, blank_ok = ch, True
            word.append(ch)
        i += 1
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words


# --- heredoc markers ----------------------------------------------------------------------


def heredocs_in_line(line: str) -> list[Heredoc]:
    """The heredocs a RUN/COPY/ADD line opens, in order (`<<EOF`, `<<-'EOF'`, `3<<EOF`).

    A quoted `'<<EOF'` is not a heredoc; `<< EOF` (a space after `<<`) is. Raises
    ArgumentError for an unbalanced quote in a delimiter.
    """
    words = _raw_words(line)
    found: list[Heredoc] = []
    i = 0
    while i < len(words):
        word = words[i]
        match = _HEREDOC_WORD.match(word)
        if match and match.group(3) == "" and i + 1 < len(words):
            # `<< EOF`: the delimiter may stand apart from the operator ("<< -EOF" names -EOF).
            word, i = f"{word} {words[i + 1]}", i + 1
        heredoc = parse_heredoc_word(word)
        if heredoc is not None:
            found.append(heredoc)
        i += 1
    return found


def parse_heredoc_word(word: str) -> Heredoc | None:
    """A single `[N]<<[-]DELIM` word as a Heredoc (no body yet), or None if it is not one."""
    match = _HEREDOC_WORD.match(word)
    if match is None:
        return None
    fd, chomp, rest = match.groups()
    delimiter = rest.strip()
    if not delimiter:
        return None
    name, quoted = _unquote_delimiter(delimiter)
    if name is None:
        return None
    return Heredoc(name=name, expand=not quoted, chomp=chomp == "-", fd=int(fd) if fd else 0)


def heredoc_marker(word: str) -> Heredoc | None:
    """Like `parse_heredoc_word`, but a malformed delimiter is simply not a heredoc.

    For words of an already parsed instruction (BuildKit's MustParseHeredoc): a COPY source
    named `<<"x` is a file name, not an error.
    """
    try:
        return parse_heredoc_word(word)
    except ArgumentError:
        return None


def _unquote_delimiter(word: str) -> tuple[str | None, bool]:
    """Remove quotes and backslash escapes; None if it is more than one word."""
    out: list[str] = []
    quote = ""
    quoted = False
    i = 0
    while i < len(word):
        ch = word[i]
        if quote == "'" and ch != "'":
            out.append(ch)
        elif ch == "\\" and quote != "'" and i + 1 < len(word):
            i += 1
            out.append(word[i])
        elif ch in "'\"" and (not quote or quote == ch):
            quote = "" if quote else ch
            quoted = True
        elif ch.isspace() and not quote:
            return None, quoted
        else:
            out.append(ch)
        i += 1
    if quote:
        raise ArgumentError(f"unterminated quote in heredoc delimiter {word!r}")
    return "".join(out), quoted


def _raw_words(line: str) -> list[str]:
    """Whitespace-separated words, quotes and escapes kept (quoted spaces do not split)."""
    words: list[str] = []
    word: list[str] = []
    quote = ""
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and quote != "'" and i + 1 < len(line):
            word += [ch, line[i + 1]]
            i += 2
            continue
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch.isspace():
            if word:
                words.append("".join(word))
            word = []
            i += 1
            continue
        word.append(ch)
        i += 1
    if word:
        words.append("".join(word))
    return words


def chomp_heredoc(content: str) -> str:
    """Strip leading tabs from every line, as `<<-` asks."""
    return re.sub(r"(?m)^\t+", "", content)


@dataclass(frozen=True, slots=True)
class SyntaxTree:
    """A parsed Stepfile at the syntax level: nodes, directives, escape character, warnings."""

    filename: str
    nodes: tuple[Node, ...]
    directives: tuple[Directive, ...]
    escape: str
    warnings: tuple[str, ...]
    lines: tuple[str, ...]

    def directive(self, name: str) -> str | None:
        return next((d.value for d in self.directives if d.name == name), None)

    def source_line(self, number: int) -> str:
        return self.lines[number - 1] if 1 <= number <= len(self.lines) else ""
