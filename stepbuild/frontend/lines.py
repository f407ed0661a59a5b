"""Physical lines → logical lines: the line pre-processor in front of the grammar.

This module owns what a context-free grammar handles badly (see the header of
`grammar/stepfile.lark`): decoding, parser directives, line continuations with the escape
character, comment and empty lines inside continuations, and heredoc bodies. It follows
BuildKit's `parser.Parse` line by line so that every Dockerfile reads the same way:

- a line whose last non-blank character is the escape character (not itself escaped)
  continues on the next line; the escape character is removed, the leading whitespace of the
  continued line is kept;
- comment lines inside a continuation are dropped; empty lines inside one are dropped with a
  warning;
- heredoc bodies are read by the caller through `LineReader.read_heredoc`, because whether an
  instruction takes heredocs depends on its parsed arguments.

No I/O here: text in, values out.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from stepbuild.errors import ParseError, SourcePosition

DEFAULT_ESCAPE = "\\"
KNOWN_DIRECTIVES = ("syntax", "escape", "check")

# The value is matched as "\S(.*\S)?" rather than ".+?": the lazy form backtracks
# quadratically on a long line of spaces, and this runs on every line of the header.
_DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(\S(?:.*\S)?)\s*\Z")
_UTF8_BOM = "\ufeff"


@dataclass(frozen=True, slots=True)
class Directive:
    """A parser directive from the top of the file, e.g. `# escape=\\``."""

    name: str
    value: str
    line: int


@dataclass(frozen=True, slots=True)
class LogicalLine:
    """One instruction's text with its continuations joined.

    `starts` and `origins` map offsets in `text` back to the source: the piece of `text` from
    `starts[i]` on came from source line `origins[i][0]`, starting at column `origins[i][1]`.
    """

    text: str
    start_line: int
    end_line: int
    starts: tuple[int, ...]
    origins: tuple[tuple[int, int], ...]

    def source_position(self, offset: int) -> tuple[int, int]:
        """The 1-based (line, column) in the source of character `offset` of `text`."""
        i = max(bisect.bisect_right(self.starts, offset) - 1, 0)
        line, column = self.origins[i]
        return line, column + offset - self.starts[i]


@dataclass(slots=True)
class LineReader:
    """Reads a Stepfile's text as logical lines, tracking directives and warnings.

    Lifecycle: `LineReader(text, filename)`; call `next_line()` until it returns None; after a
    line whose instruction takes heredocs, call `read_heredoc(name, chomp)` once per heredoc,
    in order. `directives`, `escape` and `warnings` are complete when `next_line()` is None.
    Raises `ParseError` for a bad escape directive, a repeated directive, an escape directive
    after the first instruction, or an unterminated heredoc.
    """

    text: str
    filename: str
    escape: str = DEFAULT_ESCAPE
    directives: list[Directive] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    _lines: list[str] = field(default_factory=list)
    _ends: list[str] = field(default_factory=list)
    _next: int = 0
    _directives_done: bool = False
    _seen_instruction: bool = False
    _continuation: re.Pattern[str] = field(default_factory=lambda: _continuation_regex("\\"))

    def __post_init__(self) -> None:
        text = self.text.removeprefix(_UTF8_BOM)
        _refuse_nul(text, self.filename)
        self._lines = text.split("\n")
        self._ends = ["\n"] * (len(self._lines) - 1) + [""]
        if self._lines and self._lines[-1] == "":
            self._lines.pop()
            self._ends.pop()

    @property
    def lines_read(self) -> int:
        """How many physical lines have been consumed: the last line of the latest instruction."""
        return self._next

    @property
    def line_count(self) -> int:
        return len(self._lines)

    def physical_line(self, number: int) -> str:
        """Source line `number` (1-based) without its line ending, for error messages."""
        if 1 <= number <= len(self._lines):
            return self._lines[number - 1].rstrip("\r\n")
        return ""

    def next_line(self) -> LogicalLine | None:
        """The next logical line, or None at the end of the file."""
        while self._next < len(self._lines):
            number = self._next + 1
            raw = self._take()
            stripped = raw.lstrip()
            self._check_directive(stripped, number)
            content = "" if stripped.startswith("#") else stripped
            text, ended = self._trim_continuation(content)
            if ended and text == "":
                continue
            starts, origins = [0], [(number, len(raw) - len(stripped) + 1)]
            if not ended:
                text = self._join_continuations(text, starts, origins)
            self._seen_instruction = True
            return LogicalLine(text, number, self._next, tuple(starts), tuple(origins))
        return None

    def read_heredoc(self, name: str, chomp: bool, line: LogicalLine) -> str:
        """Read the body of heredoc `name` up to its terminator line; return the raw body.

        With `chomp` (`<<-`) a terminator may be indented with tabs; the body is returned
        unchanged either way (tabs are stripped when the body is used).
        """
        body: list[str] = []
        while self._next < len(self._lines):
            end = self._ends[self._next]
            raw = self._take()
            candidate = raw.rstrip("\r\n")
            if chomp:
                candidate = candidate.lstrip("\t")
            if candidate == name:
                return "".join(body)
            body.append(raw + end)
        raise ParseError(
            f"unterminated heredoc {name!r}: no line {name!r} after line {line.start_line}",
            SourcePosition(self.filename, line.start_line, 1, self.physical_line(line.start_line)),
            hint=f"end the heredoc with a line holding only {name}",
        )

    def _take(self) -> str:
        raw = self._lines[self._next].rstrip("\r\n")
        self._next += 1
        return raw

    def _join_continuations(
        self, text: str, starts: list[int], origins: list[tuple[int, int]]
    ) -> str:
        empty_found = False
        ended = False
        while not ended and self._next < len(self._lines):
            number = self._next + 1
            raw = self._take()
            self._check_directive(raw, number)
            if raw.lstrip().startswith("#"):
                continue  # a comment line inside a continuation is dropped
            if raw.strip() == "":
                empty_found = True
                continue
            piece, ended = self._trim_continuation(raw)
            starts.append(len(text))
            origins.append((number, 1))
            text += piece
        if empty_found:
            self.warnings.append(
                f"{self.filename}:{origins[0][0]}: empty continuation line found in: {text}"
                " (empty continuation lines will become errors in a future release)"
            )
        return text

    def _trim_continuation(self, line: str) -> tuple[str, bool]:
        """Remove a trailing escape character; say whether the logical line ended here."""
        match = self._continuation.search(line)
        if match is None:
            return line, True
        return line[: match.start()] + (match.group(1) or ""), False

    def _check_directive(self, line: str, number: int) -> None:
        match = _DIRECTIVE.match(line)
        if self._directives_done:
            if match and match.group(1).lower() in KNOWN_DIRECTIVES:
                self._late_directive(match.group(1).lower(), line, number)
            return
        if match is None or match.group(1).lower() not in KNOWN_DIRECTIVES:
            self._directives_done = True
            return
        name, value = match.group(1).lower(), match.group(2)
        if any(d.name == name for d in self.directives):
            raise ParseError(
                f"only one {name} parser directive can be used",
                SourcePosition(self.filename, number, 1, line),
            )
        if name == "escape":
            self._set_escape(value, line, number)
        self.directives.append(Directive(name, value, number))

    def _late_directive(self, name: str, line: str, number: int) -> None:
        if name == "escape" and self._seen_instruction:
            raise ParseError(
                "the escape directive must come before the first instruction",
                SourcePosition(self.filename, number, 1, line),
                hint="move '# escape=…' to the first line of the file",
            )
        self.warnings.append(
            f"{self.filename}:{number}: '# {name}=' is read as a comment: parser directives"
            " must come first, before any comment, blank line or instruction"
        )

    def _set_escape(self, value: str, line: str, number: int) -> None:
        if value not in ("\\", "`"):
            column = line.index(value) + 1 if value in line else 1
            raise ParseError(
                f"invalid escape token {value!r}: must be ` or \\",
                SourcePosition(self.filename, number, column, line),
            )
        self.escape = value
        self._continuation = _continuation_regex(value)


def decode(data: bytes, filename: str) -> str:
    """Bytes of a Stepfile → text. Not UTF-8 is a ParseError at the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line_end = data.find(b"\n", exc.start)
        shown = data[line_start : line_end if line_end >= 0 else len(data)]
        raise ParseError(
            f"the file is not valid UTF-8 (byte 0x{data[exc.start]:02x})",
            SourcePosition(
                filename, line, exc.start - line_start + 1, shown.decode("utf-8", "replace")
            ),
            hint="save the Stepfile as UTF-8",
        ) from None


def _refuse_nul(text: str, filename: str) -> None:
    """A NUL character anywhere is a ParseError at its place. BuildKit's parser keeps it and
    the step fails at run time (no argv, env or path can hold one); saying where, now, is
    better. The line is shown with U+2400 (␀) in its place, so the caret lines up."""
    at = text.find("\0")
    if at < 0:
        return
    start = text.rfind("\n", 0, at) + 1
    end = text.find("\n", at)
    shown = text[start : end if end >= 0 else len(text)].rstrip("\r").replace("\0", "\u2400")
    raise ParseError(
        "the file contains a NUL character",
        SourcePosition(filename, text.count("\n", 0, at) + 1, at - start + 1, shown),
        hint="remove it; to pass a NUL byte to a command, write it as printf '\\0'",
    )


def _continuation_regex(escape: str) -> re.Pattern[str]:
    # The escape character continues the line when it is the last non-blank character, unless
    # it is itself escaped ("foo \\" ends the line). The second branch covers a line holding only
    # the escape character. Same rule as BuildKit's lineContinuationRegex.
    e = re.escape(escape)
    return re.compile(rf"([^{e}]){e}[ \t]*\Z|\A{e}[ \t]*\Z")


_SLASH_DIRECTIVE = re.compile(r"//\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(\S(?:.*\S)?)\s*\Z")


def detect_directive(text: str, name: str) -> Directive | None:
    """Find directive `name` in the header of a file, as BuildKit's DetectSyntax does.

    The header is the run of directive lines at the very top (a `#!` line may come first).
    `syntax` may also be written `//syntax=…` or as a file that is one JSON object with a
    "syntax" key. The value is the first word: `# syntax=img // opts` gives `img`.
    """
    text = text.removeprefix(_UTF8_BOM)
    if name == "syntax" and text.lstrip().startswith("{"):
        return _json_directive(text, name)
    patterns = [_DIRECTIVE] + ([_SLASH_DIRECTIVE] if name == "syntax" else [])
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if number == 1 and line.startswith("#!"):
            continue
        match = next((m for p in patterns if (m := p.match(line))), None)
        if match is None:
            return None
        if match.group(1).lower() == name:
            return Directive(name, match.group(2).split()[0], number)
    return None


def _json_directive(text: str, name: str) -> Directive | None:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        return None
    found = value.get(name) if isinstance(value, dict) else None
    return Directive(name, found, 1) if isinstance(found, str) else None
