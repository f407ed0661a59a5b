"""The progress of parallel blob transfers (push, pull): one line per blob."""

from __future__ import annotations

import sys
import threading
import time
from contextlib import suppress
from typing import TextIO

from stepbuild.oci.digest import digest_hex
from stepbuild.progress import human_size

__all__ = ["TransferDisplay", "blob_key"]


class TransferDisplay:
    """Progress of parallel transfers, one line per blob (keyed by a short digest).

    On a terminal the lines are redrawn in place (at most 10 times a second) and show byte
    counts; otherwise each change of state (`compressing`, `pushed`, `exists`, `mounted from
    …`, `downloaded`, `applied`, …) is printed once, as a line of its own. `events` keeps
    every state change (key, state) for callers and tests; `notes` every `note` (printed only
    when `verbose`). Thread-safe.
    """

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False,
                 tty: bool | None = None, verbose: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.verbose = verbose
        self.notes: list[str] = []
        self.tty = (self.stream.isatty() if tty is None else tty) and not quiet
        self.events: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._lines: dict[str, str] = {}
        self._drawn = 0
        self._last_draw = 0.0

    def status(self, key: str, text: str) -> None:
        """A new state for the blob `key` (always shown)."""
        with self._lock:
            self.events.append((key, text))
            if self.quiet:
                return
            if self.tty:
                self._lines[key] = text
                self._draw()
            else:
                self._write(f"{key}: {text}\n")

    def bytes(self, key: str, verb: str, done: int, total: int) -> None:
        """Bytes moved so far (terminal only, throttled)."""
        if not self.tty:
            return
        with self._lock:
            amount = human_size(done) + (f"/{human_size(total)}" if total else "")
            self._lines[key] = f"{verb} {amount}"
            if time.monotonic() - self._last_draw >= 0.1:
                self._draw()

    def message(self, text: str) -> None:
        """A line of its own, below the blob lines (which are then done)."""
        with self._lock:
            if self.quiet:
                return
            if self.tty:
                self._draw()
                self._lines.clear()
                self._drawn = 0
            self._write(text + "\n")

    def note(self, text: str) -> None:
        """A detail (a mirror skipped): a line of its own when `verbose`, else kept only."""
        self.notes.append(text)
        if self.verbose:
            self.message(text)

    def _draw(self) -> None:
        up = f"\x1b[{self._drawn}A" if self._drawn else ""
        lines = "".join(f"\r\x1b[2K{key}: {text}\n" for key, text in self._lines.items())
        self._write(up + lines)
        self._drawn = len(self._lines)
        self._last_draw = time.monotonic()

    def _write(self, text: str) -> None:
        with suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()


def blob_key(digest: str) -> str:
    """The key of a blob's line: the first 12 hex digits of its digest (or diff_id)."""
    return digest_hex(digest)[:12]
