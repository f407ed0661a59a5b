"""The one exception family of stepbuild.

Every error a user can cause or meet is a `StepbuildError` carrying what they need to fix it.
Errors are raised below `cli.py` and rendered once, there (see `render`); nothing else prints
or exits. Tests assert on the type and attributes, not on the wording.
"""

from __future__ import annotations

from dataclasses import dataclass


class StepbuildError(Exception):
    """Root of all expected errors. `hint` is an optional one-line suggestion for the user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        """The text the CLI prints: the message, then the hint if there is one."""
        text = self.message
        if self.hint:
            text += f"\nhint: {self.hint}"
        return text


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where in a Stepfile something is: 1-based line and column, and the line's text."""

    file: str
    line: int
    column: int
    text: str = ""


class StepfileError(StepbuildError):
    """Something is wrong with the Stepfile itself. Exit status 2, as for bad usage."""

    exit_code = 2

    def __init__(
        self, message: str, position: SourcePosition | None = None, *, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.position = position

    def render(self) -> str:
        pos = self.position
        if pos is None:
            return super().render()
        head = f"{pos.file}:{pos.line}:{pos.column}: {self.message}" if pos.line else (
            f"{pos.file}: {self.message}"
        )
        lines = [head]
        if pos.text:
            shown = pos.text.expandtabs(1)
            lines.append(f"  {shown}")
            lines.append("  " + " " * max(pos.column - 1, 0) + "^")
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


class ParseError(StepfileError):
    """The Stepfile's syntax is wrong: unknown instruction, bad flag, bad JSON, ..."""


class ExpansionError(StepfileError):
    """A variable or quote in a word cannot be expanded (`${X?unset}`, unterminated quote)."""


class UsageError(StepbuildError):
    """The command line is wrong (missing file, bad option value)."""

    exit_code = 2
