"""The plain view (`--progress=plain`): the build log as text lines, one per event.

One line per step, RUN output indented, `CACHED` / `DONE 1.20s`, a transfer's changes of
state, and a heartbeat line for anything silent too long (progress/heartbeat.py). Every line
of a multi-stage build carries its stage's label ("[build] "). `quiet` keeps only warnings
(errors are printed by the CLI). The same `line_of` makes the transcript a no-op rebuild
replays (cli/noop.py), so the replay and the full build print alike.
"""

from __future__ import annotations

import threading
from contextlib import suppress
from typing import TextIO

from stepbuild.progress.events import Event
from stepbuild.progress.units import human_size

__all__ = ["PlainView", "line_of", "prefixed"]


class PlainView:
    """Writes each event's line to `stream` (flushed; a lock keeps lines whole)."""

    def __init__(self, stream: TextIO, *, quiet: bool = False, verbose: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet
        self.verbose = verbose
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if self.quiet and event.kind != "warning":
            return
        line = line_of(event, verbose=self.verbose)
        if line is None:
            return
        with self._lock, suppress(OSError, ValueError):  # a closed stderr stops no build
            self.stream.write(prefixed(event.stage, line) + "\n")
            if event.kind == "step.done" and event.reason:  # --explain
                self.stream.write(prefixed(event.stage, f"     why: {event.reason}") + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Nothing to undo: every line is complete when written."""


def prefixed(stage: str, line: str) -> str:
    return f"[{stage}] {line}" if stage else line


def line_of(event: Event, *, verbose: bool = False) -> str | None:  # noqa: C901 - a table
    """The plain line of `event` (without its stage label), None if it shows none."""
    kind = event.kind
    if kind in ("build.started", "notice"):
        return event.text
    if kind == "step.started":
        return f"#{event.step:<3} {event.text}"
    if kind == "step.cached":
        return "     CACHED"
    if kind == "step.done":
        return f"     DONE {event.seconds or 0:.2f}s"
    if kind == "step.log":
        return "  | " + event.text
    if kind == "note":
        return f"     {event.text}" if verbose else None
    if kind == "warning":
        return f"warning: {event.text}"
    if kind == "build.done":
        named = f", tagged {', '.join(event.tags)}" if event.tags else ""
        return f"built {event.text} ({event.steps} steps, {event.cached} cached){named}"
    if kind == "transfer":  # bytes moving are shown by the heartbeat, not line by line
        return f"{event.key}: {event.text}" if event.current is None else None
    if kind == "heartbeat":
        return _heartbeat(event)
    return None  # step.error, build.error: the CLI prints the error once


def _heartbeat(event: Event) -> str:
    seconds = f"{event.seconds or 0:.0f}s"
    if event.key:
        amount = ""
        if event.current is not None:
            amount = human_size(event.current) + (
                f"/{human_size(event.total)}" if event.total else "")
            amount += ", "
        return f"still {event.text} {event.key}…: {amount}{seconds}"
    if event.step is not None:
        return f"     #{event.step} still running: {seconds}"
    return f"still working: {seconds} since the last line"
