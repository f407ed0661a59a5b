"""Build progress on the terminal: one line per step, RUN output indented, timings.

Plain text, line-buffered, to stderr by default (stdout stays for results such as the image
digest). Stages may run in parallel, so every line of a multi-stage build carries its stage's
label ("[build] ") and RUN output is collected line by line per stage before it is shown; a
lock keeps lines whole.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, TextIO


class Progress:
    """Reports build steps. `quiet` prints only warnings and errors."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False,
                 verbose: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.verbose = verbose
        self._partial: dict[str, bytes] = {}
        self._lock = threading.Lock()
        # (label, line) of every step line and its CACHED/DONE line, printed or not: what a
        # no-op rebuild replays (cli/noop.py)
        self.transcript: list[tuple[str, str]] = []

    def step(self, label: str, number: int, instruction: Any) -> None:
        text = instruction.text.split("\n", 1)[0]
        self._write(label, f"#{number:<3} {text}", transcribe=True)

    def cached(self, label: str) -> None:
        self._write(label, "     CACHED", transcribe=True)

    def done(self, label: str, seconds: float) -> None:
        self.flush_output(label)
        self._write(label, f"     DONE {seconds:.2f}s", transcribe=True)

    def note(self, label: str, message: str) -> None:
        if self.verbose:
            self._write(label, f"     {message}")

    def isolation(self, line: str, reasons: tuple[str, ...]) -> None:
        """The build's first line, naming the isolation of its RUN steps (replayed by a no-op
        rebuild); with -v, why no stronger one was taken."""
        self._write("", line, transcribe=True)
        for reason in reasons:
            self.note("", reason)

    def warn(self, message: str) -> None:
        self._write("", f"warning: {message}", always=True)

    def summary(self, steps: int, cached: int, digest: str, tags: list[str]) -> None:
        named = f", tagged {', '.join(tags)}" if tags else ""
        self._write("", f"built {digest} ({steps} steps, {cached} cached){named}")

    def output(self, label: str, data: bytes) -> None:
        """Bytes a RUN printed; shown line by line as they complete."""
        with self._lock:
            buffered = self._partial.get(label, b"") + data
            *lines, self._partial[label] = buffered.split(b"\n")
        for line in lines:
            self._write(label, "  | " + line.decode("utf-8", "replace"))

    def flush_output(self, label: str) -> None:
        with self._lock:
            rest = self._partial.pop(label, b"")
        if rest:
            self._write(label, "  | " + rest.decode("utf-8", "replace"))

    def _write(self, label: str, line: str, *, always: bool = False,
               transcribe: bool = False) -> None:
        if transcribe:
            with self._lock:
                self.transcript.append((label, line))
        if self.quiet and not always:
            return
        prefix = f"[{label}] " if label else ""
        with self._lock:
            self.stream.write(prefix + line + "\n")
            self.stream.flush()


def human_size(n: int) -> str:
    """A byte count as people read it (decimal units, as docker shows them): 512B, 3.4MB."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{n}B"
