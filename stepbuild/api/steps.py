"""Per-step records of a build, assembled from its events: one source of truth.

`StepCollector` is a `Progress` listener. It sees what every view sees (`step.started`,
`step.cached`, `step.done`, `step.error`) and keeps one `StepRecord` per step, so the result
a Python caller gets and the lines a terminal shows cannot disagree.

A step that makes no layer (FROM, ENV, LABEL, ...) reports no outcome of its own: it counts
as done once the next step of its stage starts, or once the build is done. In a failed build,
a step left without an outcome was interrupted: `stopped`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from stepbuild.progress.events import Event

__all__ = ["CACHED", "DONE", "FAILED", "STOPPED", "StepCollector", "StepRecord"]

CACHED, DONE, FAILED, STOPPED = "cached", "done", "failed", "stopped"


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One step of a build. `stage`: its stage's label ("" in a single-stage build, else
    the stage's name or index); `step`: the build's 1-based step number; `text`: the
    instruction's first line; `line`: its line in the Stepfile (None: not known);
    `status`: cached, done, failed or stopped; `seconds`: how long a step that ran took
    (None for a cached step, one that makes no layer, or one that did not finish);
    `exit_code`: a failed RUN's exit status."""

    stage: str
    step: int
    text: str
    line: int | None
    status: str = ""
    seconds: float | None = None
    exit_code: int | None = None


class StepCollector:
    """Collects `StepRecord`s from events (thread-safe: stages report from their threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steps: dict[int, StepRecord] = {}
        self._open: dict[str, int] = {}  # stage label → its step still without an outcome
        self._warnings: list[str] = []

    def __call__(self, event: Event) -> None:
        with self._lock:
            if event.kind == "step.started" and event.step is not None:
                self._close(event.stage, DONE)  # a step that made no layer
                self._steps[event.step] = StepRecord(event.stage, event.step, event.text,
                                                     event.line)
                self._open[event.stage] = event.step
            elif event.kind in ("step.cached", "step.done", "step.error"):
                status = {"step.cached": CACHED, "step.done": DONE}.get(event.kind, FAILED)
                self._close(event.stage, status, event.seconds, event.exit_code)
            elif event.kind == "warning":
                self._warnings.append(event.text)

    def _close(self, stage: str, status: str, seconds: float | None = None,
               exit_code: int | None = None) -> None:
        number = self._open.pop(stage, None)
        if number is not None:
            self._steps[number] = replace(self._steps[number], status=status, seconds=seconds,
                                          exit_code=exit_code)

    def warnings(self) -> tuple[str, ...]:
        """Every warning so far, in order."""
        with self._lock:
            return tuple(self._warnings)

    def running(self) -> list[StepRecord]:
        """The steps started and not finished, in step order."""
        with self._lock:
            return sorted((self._steps[n] for n in self._open.values()), key=_number)

    def records(self, *, succeeded: bool) -> tuple[StepRecord, ...]:
        """Every step in step order; those still open are done (`succeeded`) or stopped."""
        with self._lock:
            left = DONE if succeeded else STOPPED
            return tuple(r if r.status else replace(r, status=left)
                         for r in sorted(self._steps.values(), key=_number))


def _number(record: StepRecord) -> int:
    return record.step
