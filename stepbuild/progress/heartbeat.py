"""Heartbeats: a `heartbeat` event for anything silent for `interval` seconds.

A RUN that prints nothing, a blob whose bytes move without a line being printed (the plain
view shows a transfer's changes of state, not its bytes), or a build quiet between steps
(exporting, a manifest upload) would otherwise look hung. `Heartbeat` watches the events
(`observe`, a listener) and, from one thread per build, emits a heartbeat for each running
step or transfer nothing was heard of for `interval` seconds, and one for the whole build when
nothing at all was. It repeats every `interval` while the silence lasts.

Lifecycle: `start()` once, `stop()` when the build ends (it joins the thread; idempotent).
`due(now)` is the decision alone, for tests with a clock of their own.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from stepbuild.errors import UsageError
from stepbuild.progress.events import Event, EventCallback, under_way

__all__ = ["DEFAULT_INTERVAL", "ENV", "Heartbeat", "interval_from_environment"]

DEFAULT_INTERVAL = 10.0  # seconds of silence before a heartbeat (issue 14)
ENV = "STEPBUILD_HEARTBEAT"  # seconds; tests set a short one


def interval_from_environment() -> float:
    """$STEPBUILD_HEARTBEAT (seconds), else DEFAULT_INTERVAL; UsageError if not a number."""
    text = os.environ.get("STEPBUILD_HEARTBEAT", "")  # (ENV)
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise UsageError(f"{ENV}={text!r}: expected a number of seconds",
                         hint=f"unset it for the default ({DEFAULT_INTERVAL:.0f})")
    return value


@dataclass
class _Activity:
    """A running step or a moving blob: since when, and when it was last heard of."""

    event: Event       # what started it (a step's text), or the transfer's latest state
    started: float
    heard: float


class Heartbeat:
    """Emits heartbeats through `emit` (usually `Progress.emit`). Thread-safe."""

    def __init__(self, emit: EventCallback, interval: float = DEFAULT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.emit = emit
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._active: dict[tuple[str, str], _Activity] = {}
        self._heard = clock()  # anything at all was heard (the whole build's silence)
        self._beat = self._heard  # the whole build's last heartbeat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def observe(self, event: Event) -> None:
        """A listener: every event of the build passes here."""
        if event.kind == "heartbeat":
            return
        now = self.clock()
        with self._lock:
            if not (event.kind == "transfer" and event.current is not None):
                self._heard = now  # bytes counting is not a line printed
            if event.kind == "transfer":
                self._transfer(event, now)
            elif event.kind == "step.started":
                self._active[("step", event.stage)] = _Activity(event, now, now)
            elif event.kind in ("step.cached", "step.done", "step.error"):
                self._active.pop(("step", event.stage), None)
            elif event.kind in ("step.log", "note"):
                activity = self._active.get(("step", event.stage))
                if activity is not None:
                    activity.heard = now

    def _transfer(self, event: Event, now: float) -> None:
        slot = ("transfer", event.key)
        if not under_way(event):
            self._active.pop(slot, None)
            return
        known = self._active.get(slot)
        if known is None or event.current is None:  # a new state: a line was printed
            self._active[slot] = _Activity(event, now, now)
        else:  # bytes moving (`pushing` after `compressing`): not a line printed
            known.event = event

    def due(self, now: float) -> list[Event]:
        """The heartbeats to emit at `now` (each resets its silence)."""
        beats = []
        with self._lock:
            for (kind, _), activity in self._active.items():
                if now - activity.heard < self.interval:
                    continue
                activity.heard = now
                seen = activity.event
                if kind == "step":
                    beats.append(Event("heartbeat", stage=seen.stage, step=seen.step,
                                       text=seen.text, seconds=now - activity.started))
                else:
                    beats.append(Event("heartbeat", key=seen.key, text=seen.text.split()[0],
                                       current=seen.current, total=seen.total,
                                       seconds=now - activity.started))
            if not beats and not self._active and \
                    now - max(self._heard, self._beat) >= self.interval:
                beats.append(Event("heartbeat", seconds=now - self._heard))
                self._beat = now
        return beats

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="stepbuild-heartbeat",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _loop(self) -> None:
        # Look a few times per interval, so a heartbeat comes at most a quarter late.
        tick = min(self.interval / 4, 1.0)
        while not self._stop.wait(tick):
            for beat in self.due(self.clock()):
                self.emit(beat)
