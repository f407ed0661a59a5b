"""Build progress on the terminal: one line per step, RUN output indented, timings.

Plain text, line-buffered, to stderr by default (stdout stays for results such as the image
digest). Stages may run in parallel, so every line of a multi-stage build carries its stage's
label ("[build] ") and RUN output is collected line by line per stage before it is shown; a
lock keeps lines whole.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from typing import Any, TextIO

from stepbuild.progress.events import Event, EventCallback


class Progress:
    """Reports build steps. `quiet` prints only warnings and errors.

    Every report is also an `Event` (progress/events.py) handed to each of `listeners`, in
    the reporting thread; a listener must be quick and must not raise."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False,
                 verbose: bool = False, listeners: Iterable[EventCallback] = ()) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.verbose = verbose
        self.listeners = list(listeners)
        self._partial: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._step_of: dict[str, int] = {}  # stage label → its running step's number
        # (label, line) of every step line and its CACHED/DONE line, printed or not: what a
        # no-op rebuild replays (cli/noop.py)
        self.transcript: list[tuple[str, str]] = []

    def emit(self, event: Event) -> None:
        """Hand `event` to every listener."""
        for listener in self.listeners:
            listener(event)

    def step(self, label: str, number: int, instruction: Any) -> None:
        text = instruction.text.split("\n", 1)[0]
        self._step_of[label] = number
        loc = getattr(instruction, "loc", None)
        self.emit(Event("step.started", stage=label, step=number, text=text,
                        line=loc.line if loc is not None else None))
        self._write(label, f"#{number:<3} {text}", transcribe=True)

    def cached(self, label: str) -> None:
        self.emit(Event("step.cached", stage=label, step=self._step_of.get(label)))
        self._write(label, "     CACHED", transcribe=True)

    def done(self, label: str, seconds: float) -> None:
        self.flush_output(label)
        self.emit(Event("step.done", stage=label, step=self._step_of.get(label),
                        seconds=seconds))
        self._write(label, f"     DONE {seconds:.2f}s", transcribe=True)

    def failed(self, label: str, message: str) -> None:
        """The running step of `label` failed (the error itself is printed by the CLI)."""
        self.flush_output(label)
        self.emit(Event("step.error", stage=label, step=self._step_of.get(label),
                        text=message))

    def note(self, label: str, message: str) -> None:
        self.emit(Event("note", stage=label, step=self._step_of.get(label), text=message))
        if self.verbose:
            self._write(label, f"     {message}")

    def isolation(self, line: str, reasons: tuple[str, ...]) -> None:
        """The build's first line (replayed by a no-op rebuild), and with -v why no stronger
        isolation was taken."""
        self.emit(Event("build.started", text=line))
        self._write("", line, transcribe=True)
        for reason in reasons:
            self.note("", reason)

    def notice(self, message: str) -> None:
        """Something about the whole build worth knowing (not with -q)."""
        self.emit(Event("notice", text=message))
        self._write("", message)

    def warn(self, message: str) -> None:
        self.emit(Event("warning", text=message))
        self._write("", f"warning: {message}", always=True)

    def summary(self, steps: int, cached: int, digest: str, tags: list[str]) -> None:
        self.emit(Event("build.done", text=digest, steps=steps, cached=cached,
                        tags=tuple(tags)))
        named = f", tagged {', '.join(tags)}" if tags else ""
        self._write("", f"built {digest} ({steps} steps, {cached} cached){named}")

    def output(self, label: str, data: bytes) -> None:
        """Bytes a RUN printed; shown line by line as they complete."""
        with self._lock:
            buffered = self._partial.get(label, b"") + data
            *lines, self._partial[label] = buffered.split(b"\n")
        for line in lines:
            self._log_line(label, line)

    def flush_output(self, label: str) -> None:
        with self._lock:
            rest = self._partial.pop(label, b"")
        if rest:
            self._log_line(label, rest)

    def _log_line(self, label: str, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        self.emit(Event("step.log", stage=label, step=self._step_of.get(label), text=text))
        self._write(label, "  | " + text)

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
