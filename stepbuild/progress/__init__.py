"""Build progress: every report is an `Event`, drawn by one view and handed to listeners.

`Progress` is what the builder, the steps and the transfers report to. It turns each report
into an `Event` (progress/events.py) and hands it to its view, which draws it on stderr
(stdout stays for results such as the image digest), and to its `listeners` (the Python API's
callback). The views, one per `--progress` mode (`make_progress`):

- plain (plain.py): the build log, a line per event; with `quiet`, warnings only;
- tty (tty.py): a live view drawn with rich (imported only then);
- rawjson (rawjson.py): one JSON object per event;

plain and rawjson also get a heartbeat (heartbeat.py) for anything silent too long.
Stages may run in parallel, so RUN output is collected line by line per stage before it is
reported. `close()` ends the view and the heartbeat's thread when the build ends.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from stepbuild.progress.events import Event, EventCallback
from stepbuild.progress.plain import PlainView, line_of
from stepbuild.progress.units import human_size

if TYPE_CHECKING:
    from stepbuild.progress.heartbeat import Heartbeat

__all__ = ["MODES", "Progress", "View", "human_size", "make_progress"]

MODES = ("plain", "tty", "rawjson", "quiet")  # what `make_progress` draws (auto is the CLI's)
_TRANSCRIBED = frozenset({"build.started", "step.started", "step.cached", "step.done"})


class View(Protocol):
    """Draws events. Called from any thread (a view locks what it must); `close()` ends it
    (idempotent)."""

    def __call__(self, event: Event) -> None: ...

    def close(self) -> None: ...


def make_progress(mode: str, stream: TextIO | None = None, *, verbose: bool = False,
                  heartbeat: float | None = None,
                  listeners: Iterable[EventCallback] = ()) -> Progress:
    """A Progress drawing `mode` (one of MODES) on `stream` (default: stderr). `heartbeat`:
    seconds of silence before a heartbeat (plain and rawjson; None: none)."""
    stream = stream or sys.stderr
    view: View
    if mode == "tty":
        from stepbuild.progress.tty import TtyView  # rich: only for this view

        view = TtyView(stream, verbose=verbose)
    elif mode == "rawjson":
        from stepbuild.progress.rawjson import RawJsonView

        view = RawJsonView(stream)
    elif mode in ("plain", "quiet"):
        view = PlainView(stream, quiet=mode == "quiet", verbose=verbose)
    else:
        raise ValueError(f"unknown progress mode {mode!r}")
    progress = Progress(stream, quiet=mode == "quiet", verbose=verbose, view=view,
                        listeners=listeners)
    if heartbeat is not None and mode in ("plain", "rawjson"):
        progress.start_heartbeat(heartbeat)
    return progress


class Progress:
    """Reports build steps as events to `view` (default: the plain log on `stream`, only
    warnings when `quiet`) and to each of `listeners`, in the reporting thread; a listener
    must be quick and must not raise. Thread-safe."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False,
                 verbose: bool = False, listeners: Iterable[EventCallback] = (),
                 view: View | None = None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.verbose = verbose
        self.view: View = view or PlainView(self.stream, quiet=quiet, verbose=verbose)
        self.listeners = list(listeners)
        self.heartbeat: Heartbeat | None = None
        self._partial: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._step_of: dict[str, int] = {}  # stage label → its running step's number
        # (label, line) of every step line and its CACHED/DONE line, printed or not: what a
        # no-op rebuild replays (cli/noop.py)
        self.transcript: list[tuple[str, str]] = []
        self._build_failed = False  # build.error was emitted
        self.explain = False  # --explain: step.done events carry why the step ran

    def emit(self, event: Event) -> None:
        """Hand `event` to the view, the heartbeat and every listener."""
        if event.kind in _TRANSCRIBED:
            with self._lock:
                self.transcript.append((event.stage, line_of(event) or ""))
        self.view(event)
        if self.heartbeat is not None:
            self.heartbeat.observe(event)
        for listener in self.listeners:
            listener(event)

    def start_heartbeat(self, interval: float) -> None:
        """Heartbeats after `interval` seconds of silence, from a thread `close()` stops."""
        from stepbuild.progress.heartbeat import Heartbeat

        self.heartbeat = Heartbeat(self.emit, interval)
        self.heartbeat.start()

    def close(self) -> None:
        """The build ended: stop the heartbeat and end the view (idempotent)."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
        self.view.close()

    def build_failed(self, message: str, exit_code: int) -> None:
        """The command failed with `message` (which the CLI prints, but in rawjson). Said
        once: `stepbuild.api` says it before the error reaches the CLI, which says it too."""
        with self._lock:
            if self._build_failed:
                return
            self._build_failed = True
        self.emit(Event("build.error", text=message, exit_code=exit_code))

    def step(self, label: str, number: int, instruction: Any) -> None:
        text = instruction.text.split("\n", 1)[0]
        self._step_of[label] = number
        loc = getattr(instruction, "loc", None)
        self.emit(Event("step.started", stage=label, step=number, text=text,
                        line=loc.line if loc is not None else None))

    def cached(self, label: str) -> None:
        self.emit(Event("step.cached", stage=label, step=self._step_of.get(label)))

    def done(self, label: str, seconds: float, reason: str = "") -> None:
        """The running step of `label` ran in `seconds`; `reason`: why it missed the cache,
        carried by the event with --explain (`explain`)."""
        self.flush_output(label)
        self.emit(Event("step.done", stage=label, step=self._step_of.get(label),
                        seconds=seconds, reason=reason if self.explain else ""))

    def failed(self, label: str, message: str, exit_code: int | None = None) -> None:
        """The running step of `label` failed (the error itself is printed by the CLI);
        `exit_code`: a RUN's exit status."""
        self.flush_output(label)
        self.emit(Event("step.error", stage=label, step=self._step_of.get(label),
                        text=message, exit_code=exit_code))

    def note(self, label: str, message: str) -> None:
        self.emit(Event("note", stage=label, step=self._step_of.get(label), text=message))

    def isolation(self, line: str, reasons: tuple[str, ...]) -> None:
        """The build's first line (replayed by a no-op rebuild), and with -v why no stronger
        isolation was taken."""
        self.emit(Event("build.started", text=line))
        for reason in reasons:
            self.note("", reason)

    def notice(self, message: str) -> None:
        """Something about the whole build worth knowing (not with -q)."""
        self.emit(Event("notice", text=message))

    def warn(self, message: str) -> None:
        self.emit(Event("warning", text=message))

    def summary(self, steps: int, cached: int, digest: str, tags: list[str]) -> None:
        self.emit(Event("build.done", text=digest, steps=steps, cached=cached,
                        tags=tuple(tags)))

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
