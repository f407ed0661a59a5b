"""Stepfile text → syntax tree (`syntax.Node`) → typed instructions (`instructions`).

`parse_syntax` is BuildKit's parser level: keyword, flags as written and split arguments,
with unknown keywords kept; the conformance suite checks it. `parse` goes on to typed
instructions (`convert.py`), checking every flag and argument. Both raise `ParseError` with
the file, line and column; nothing else escapes (the fuzz tests hold us to that).

The grammar (`grammar/stepfile.lark`) is compiled once per process and its LALR tables are
cached on disk in a directory only the current user can write (lark's cache is a pickle, so
it must never be read from a shared temp dir).
"""

from __future__ import annotations

import dataclasses
import os
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedInput, VisitError

from stepbuild.errors import ParseError, SourcePosition
from stepbuild.frontend.convert import to_stepfile
from stepbuild.frontend.lines import LineReader, LogicalLine, decode
from stepbuild.frontend.syntax import (
    ArgumentError,
    Node,
    SyntaxTree,
    heredocs_in_line,
    parse_arguments,
    unquote_flag,
)

if TYPE_CHECKING:
    from stepbuild.frontend.instructions import Stepfile

__all__ = ["SyntaxTree", "decode", "parse", "parse_syntax"]

GRAMMAR_NAME = "stepfile.lark"


def parse(text: str, filename: str = "Stepfile") -> Stepfile:
    """Parse Stepfile text into typed instructions. Raises ParseError."""
    return to_stepfile(parse_syntax(text, filename))


def parse_syntax(text: str, filename: str = "Stepfile") -> SyntaxTree:
    """Parse Stepfile text into syntax nodes (BuildKit's AST level). Raises ParseError."""
    reader = LineReader(text, filename)
    nodes: list[Node] = []
    while (line := reader.next_line()) is not None:
        node = _parse_line(line, reader)
        if node.can_contain_heredoc():
            node = _attach_heredocs(node, line, reader)
        nodes.append(dataclasses.replace(node, end_line=reader.lines_read))
    lines = tuple(reader.physical_line(n) for n in range(1, reader.line_count + 1))
    if not nodes:
        last = reader.line_count
        raise ParseError(
            "file with no instructions",
            SourcePosition(filename, last, 1, reader.physical_line(last)) if last else None,
            hint="a Stepfile needs at least a FROM instruction",
        )
    return SyntaxTree(
        filename, tuple(nodes), tuple(reader.directives), reader.escape,
        tuple(reader.warnings), lines,
    )


# --- one logical line --------------------------------------------------------------------


def _parse_line(line: LogicalLine, reader: LineReader) -> Node:
    try:
        tree = _parser().parse(line.text)
        return _NodeBuilder(line, reader).transform(tree)  # type: ignore[no-any-return]
    except VisitError as exc:
        if isinstance(exc.orig_exc, ParseError):
            raise exc.orig_exc from None
        if isinstance(exc.orig_exc, RecursionError):
            raise _error_at(line, reader, 0, "instruction nested too deeply") from None
        raise
    except UnexpectedInput as exc:
        pos = getattr(exc, "pos_in_stream", None) or 0
        raise _error_at(line, reader, pos, "unexpected text") from None
    except RecursionError:
        # Only absurd input gets here (hundreds of nested ONBUILDs); refuse it cleanly.
        raise _error_at(line, reader, 0, "instruction nested too deeply") from None


def _error_at(line: LogicalLine, reader: LineReader, offset: int, message: str) -> ParseError:
    number, column = line.source_position(offset)
    return ParseError(message, SourcePosition(reader.filename, number, column,
                                              reader.physical_line(number)))


def _attach_heredocs(node: Node, line: LogicalLine, reader: LineReader) -> Node:
    if "<<" not in line.text:
        return node
    try:
        markers = heredocs_in_line(line.text)
    except ArgumentError as exc:
        raise _error_at(line, reader, line.text.find("<<"), str(exc)) from None
    bodies = tuple(
        dataclasses.replace(h, content=reader.read_heredoc(h.name, h.chomp, line))
        for h in markers
    )
    if node.keyword == "onbuild" and node.trigger is not None:
        return dataclasses.replace(node, trigger=dataclasses.replace(node.trigger, heredocs=bodies))
    return dataclasses.replace(node, heredocs=bodies)


class _NodeBuilder(Transformer):  # type: ignore[type-arg]
    """Grammar rules → `Node`. Method names are the grammar's rule names."""

    def __init__(self, line: LogicalLine, reader: LineReader) -> None:
        super().__init__()
        self._line = line
        self._reader = reader

    def line(self, children: list[Node]) -> Node:
        return children[0]

    def keyword(self, children: list[Token]) -> Token:
        return children[0]

    def flags(self, children: list[Token]) -> tuple[str, ...]:
        return tuple(unquote_flag(str(t)) for t in children if t.type == "FLAG")

    trigger_flags = flags

    def command(self, children: list[Any]) -> Node:
        keyword, flags, *rest = children
        args_token = rest[0] if rest else None
        name = str(keyword).lower()
        try:
            args, is_json = parse_arguments(name, str(args_token or ""), self._reader.escape)
        except ArgumentError as exc:
            start = args_token.start_pos if args_token is not None else keyword.start_pos
            raise _error_at(self._line, self._reader, start + exc.offset, str(exc)) from None
        return self._node(keyword, name, flags, args, is_json)

    def onbuild(self, children: list[Any]) -> Node:
        keyword, flags, *rest = children
        trigger = rest[0] if rest else None
        return self._node(keyword, "onbuild", flags, (), False, trigger)

    def _node(
        self, keyword: Token, name: str, flags: tuple[str, ...], args: tuple[str, ...],
        is_json: bool, trigger: Node | None = None,
    ) -> Node:
        number, column = self._line.source_position(keyword.start_pos or 0)
        return Node(
            keyword=name, flags=flags, args=args, start_line=self._line.start_line,
            end_line=self._line.end_line, column=column if number == self._line.start_line
            else 1, original=self._line.text[keyword.start_pos:], is_json=is_json, trigger=trigger,
            keyword_text=str(keyword),
        )


# --- the compiled grammar ------------------------------------------------------------------


def grammar_path() -> Path:
    """The grammar file: inside the installed package, else the source tree's `grammar/`."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "grammar" / GRAMMAR_NAME,
                      package.parent / "grammar" / GRAMMAR_NAME):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{GRAMMAR_NAME} is missing from the stepbuild installation")


@cache
def _parser() -> Lark:
    return Lark.open(
        str(grammar_path()), start="line", parser="lalr", lexer="contextual",
        propagate_positions=True, maybe_placeholders=False, cache=_cache_file(),
    )


def _cache_file() -> str | bool:
    """A per-user cache path for lark's compiled tables, or False (no cache) if unsafe."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    directory = os.path.join(base, "stepbuild")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.stat(directory)
    except OSError:
        return False
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        return False  # someone else could plant a pickle there
    import lark

    return os.path.join(directory, f"grammar-lark{lark.__version__}.cache")
