"""Lines a command prints beside its progress, as `notice` events.

What a build prints to stderr besides its progress (one line per --output) reaches every
view in its form: the plain log prints the very line; rawjson stays JSON. Moved here from
cli/progress_flags.py so that `stepbuild.api` reports them the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO, cast

if TYPE_CHECKING:
    from stepbuild.progress import Progress

__all__ = ["notices"]


def notices(progress: Progress) -> TextIO:
    """A text stream whose lines become `notice` events of `progress`: what a command prints
    to stderr besides its progress (one line per --output) reaches every view in its form
    (the plain log prints the very line; rawjson stays JSON)."""
    return cast("TextIO", _Notices(progress))


class _Notices:
    """The `write`/`flush` of a text stream; complete lines go out as notices."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._partial = ""

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self.progress.notice(line)
        return len(text)

    def flush(self) -> None:
        """Lines go out when complete; a partial one waits for its newline."""
