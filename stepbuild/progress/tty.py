"""The tty view (`--progress=tty`): a live view of the build, drawn with rich.

At the bottom, redrawn a few times a second: each running step with its timer and the last
`tail` lines it printed, and a bar per moving blob (size, rate, ETA). Above it, scrolling as
a log does: each finished step collapsed to one line (`CACHED`, `DONE 1.2s`), warnings,
notices, and a failed step with its last lines, which stay above the error the CLI prints.
Colour only where the terminal has it (rich's detection; NO_COLOR is honoured).

Lifecycle: the live area starts with the view; `build.done` or `build.error`, or `close()`,
draws the final state once, stops the refresh thread and gives the cursor back (idempotent).
rich is imported here only, so a build that does not draw this view never loads it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from stepbuild.progress.events import Event, under_way
from stepbuild.progress.plain import line_of, prefixed

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["TAIL", "TtyView"]

TAIL = 6  # output lines shown under each running step
REFRESH_PER_SECOND = 8  # timers move in tenths of a second
_FAILED_TAIL = 20  # lines of a failed step's output kept above the error


@dataclass
class _Running:
    event: Event  # its step.started
    started: float
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_FAILED_TAIL))

    def heading(self) -> str:
        return prefixed(self.event.stage, f"#{self.event.step} {self.event.text}")


class TtyView:
    """A live view on `stream` (a terminal; `force_terminal` draws it on anything).

    Locking: `_state` guards the view's own data only and is never held while calling into
    rich, whose refresh thread holds rich's lock while it asks `_frame` for the picture
    (holding both in turn would deadlock)."""

    def __init__(self, stream: TextIO, *, verbose: bool = False, tail: int = TAIL,
                 force_terminal: bool | None = None) -> None:
        self.verbose = verbose
        self.tail = tail
        self.console = Console(file=stream, force_terminal=force_terminal, highlight=False,
                               soft_wrap=False)
        self._state = threading.Lock()
        self._running: dict[str, _Running] = {}  # stage label → its running step
        self._bars = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                              TransferSpeedColumn(), TimeRemainingColumn(),
                              console=self.console, auto_refresh=False)
        self._tasks: dict[str, TaskID] = {}  # blob key → its bar
        self._ending = threading.Lock()  # one thread stops the live area
        self._stopped = False
        # Stray writes to stderr (an export's lines) go above the live area; stdout is the
        # digest's, never redirected (it may be a pipe while stderr is the terminal).
        self._live = Live(get_renderable=self._frame, console=self.console,
                          auto_refresh=False, redirect_stdout=False, redirect_stderr=True)
        self._live.start()
        # Our own refresh thread rather than rich's, which its stop() does not join: the
        # view's end leaves no thread behind.
        self._stop_refresh = threading.Event()
        self._refresher = threading.Thread(target=self._refresh, name="stepbuild-tty",
                                           daemon=True)
        self._refresher.start()

    def __call__(self, event: Event) -> None:
        if self._stopped:
            return
        kind = event.kind
        if kind == "step.started":
            self._started(event)
        elif kind == "step.log":
            with self._state:
                running = self._running.get(event.stage)
                if running is not None:
                    running.tail.append(event.text)
        elif kind in ("step.cached", "step.done", "step.error"):
            self._finished(event)
        elif kind == "transfer":
            self._transfer(event)
        elif kind in ("build.done", "build.error"):
            self._end(event)
        elif kind == "warning":
            self._print(Text(f"warning: {event.text}", style="yellow"))
        elif kind in ("build.started", "notice") or (kind == "note" and self.verbose):
            line = (line_of(event, verbose=True) or "").strip()
            self._print(Text(prefixed(event.stage, line), style="dim"))

    def close(self) -> None:
        """Draw the final frame, stop refreshing, restore the cursor (idempotent)."""
        with self._ending:
            if self._stopped:
                return
            self._stopped = True
            self._stop_refresh.set()
            self._refresher.join()
            self._live.stop()  # the final frame, the cursor shown again

    def _refresh(self) -> None:
        while not self._stop_refresh.wait(1 / REFRESH_PER_SECOND):
            self._live.refresh()

    def _started(self, event: Event) -> None:
        with self._state:
            before = self._running.get(event.stage)
            self._running[event.stage] = _Running(event, time.monotonic())
        if before is not None:  # FROM, ENV, ...: done when the next step starts
            self._print(Text(before.heading()))

    def _end(self, event: Event) -> None:
        """The build is over: the final frame (what still ran when it failed), then the
        summary line."""
        if event.kind == "build.done":  # the last steps without an outcome (CMD, ...)
            with self._state:
                left, self._running = list(self._running.values()), {}
            for running in sorted(left, key=lambda r: r.event.step or 0):
                self._print(Text(running.heading()))
        self.close()
        if event.kind == "build.done":
            # whole, for a terminal to wrap and a reader to copy the digest from
            self.console.print(Text(line_of(event) or "", style="bold green"), soft_wrap=True)

    def _finished(self, event: Event) -> None:
        with self._state:
            running = self._running.pop(event.stage, None)
        heading = running.heading() if running is not None else prefixed(
            event.stage, f"#{event.step}")
        if event.kind == "step.cached":
            self._print(self._step_line(heading, "", "  CACHED", "blue"))
        elif event.kind == "step.done":
            self._print(self._step_line(heading, "", f"  DONE {event.seconds or 0:.1f}s",
                                        "green"))
        else:  # the failed step and its last lines stay above the error
            self._print(self._step_line(heading, "", "  ERROR", "bold red"))
            for line in list(running.tail) if running is not None else ():
                self._print(Text("  | " + line, style="red"))

    def _transfer(self, event: Event) -> None:
        with self._state:
            task = self._tasks.get(event.key)
            if not under_way(event) and task is not None:
                del self._tasks[event.key]
        if not under_way(event):  # done: its bar becomes a line of the log
            if task is not None:
                self._bars.remove_task(task)
            self._print(Text(f"{event.key}: {event.text}", style="dim"))
            return
        verb = event.text.split(" ", 1)[0]
        if task is None:
            task = self._bars.add_task(f"{event.key} {verb}", total=event.total or None)
            with self._state:
                self._tasks[event.key] = task
        self._bars.update(task, description=f"{event.key} {verb}",
                          completed=event.current or 0, total=event.total or None)

    def _print(self, text: Text) -> None:
        """A line above the live area, which is drawn again below it: first brought up to
        date (rich draws again what it drew last), so a finished step is not shown twice."""
        text.no_wrap, text.overflow = True, "ellipsis"
        if not self._stopped:
            self._live.refresh()
        self.console.print(text)

    def _step_line(self, heading: str, style: str, outcome: str, outcome_style: str) -> Text:
        """A step's line: its heading cut to the terminal's width, so that the outcome or
        the timer after it always shows."""
        head = Text(heading, style=style)
        head.truncate(max(self.console.width - len(outcome), 10), overflow="ellipsis")
        line = Text.assemble(head, (outcome, outcome_style))
        line.no_wrap = True
        return line

    def _frame(self) -> RenderableType:
        """What the live area shows now: running steps (timer, last lines), then the bars."""
        now = time.monotonic()
        with self._state:
            running = [(r.heading(), now - r.started, list(r.tail)[-self.tail:])
                       for r in self._running.values()]
            bars = bool(self._tasks)
        parts: list[RenderableType] = []
        for heading, seconds, tail in running:
            parts.append(self._step_line(heading, "bold", f"  {seconds:.1f}s", "cyan"))
            parts.extend(Text("  | " + line, style="dim", no_wrap=True, overflow="ellipsis")
                         for line in tail)
        if bars:
            parts.append(self._bars)
        return Group(*parts)
