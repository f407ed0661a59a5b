"""heartbeat.py: a heartbeat for a silent step, a silent transfer, a silent build; none
while output flows; the thread stops with the build."""

from __future__ import annotations

import threading
import time

import pytest

from stepbuild.errors import UsageError
from stepbuild.progress import make_progress
from stepbuild.progress.events import Event
from stepbuild.progress.heartbeat import DEFAULT_INTERVAL, ENV, Heartbeat, interval_from_environment


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def beats(interval: float = 10) -> tuple[Heartbeat, Clock, list[Event]]:
    clock, emitted = Clock(), []
    return Heartbeat(emitted.append, interval, clock), clock, emitted


def test_a_silent_step_beats_every_interval_and_output_resets_it() -> None:
    heart, clock, _ = beats()
    heart.observe(Event("step.started", stage="b", step=3, text="RUN sleep 60"))
    clock.now += 9.9
    assert heart.due(clock.now) == []
    clock.now += 0.1
    [beat] = heart.due(clock.now)
    assert (beat.kind, beat.stage, beat.step, beat.text, beat.seconds) == (
        "heartbeat", "b", 3, "RUN sleep 60", 10.0)
    clock.now += 5
    heart.observe(Event("step.log", stage="b", step=3, text="tick"))
    clock.now += 9
    assert heart.due(clock.now) == []
    clock.now += 1
    assert [b.seconds for b in heart.due(clock.now)] == [25.0]  # since the step started


def test_a_finished_step_is_forgotten() -> None:
    heart, clock, _ = beats()
    for kind in ("step.done", "step.cached", "step.error"):
        heart.observe(Event("step.started", stage="", step=1, text="RUN x"))
        heart.observe(Event(kind, stage="", step=1, seconds=0.1))
        clock.now += 10
        assert all(b.step is None for b in heart.due(clock.now))  # the whole build's only


def test_a_transfer_moving_bytes_silently_beats_with_its_amount() -> None:
    heart, clock, _ = beats()
    heart.observe(Event("transfer", key="12ab34cd56ef", text="compressing (gzip)"))
    clock.now += 4
    heart.observe(Event("transfer", key="12ab34cd56ef", text="pushing", current=80_200_000,
                        total=200_000_000))
    clock.now += 7  # bytes are no line: 11 s of silence
    [beat] = heart.due(clock.now)
    assert (beat.key, beat.text, beat.current, beat.total, beat.seconds) == (
        "12ab34cd56ef", "pushing", 80_200_000, 200_000_000, 11.0)
    heart.observe(Event("transfer", key="12ab34cd56ef", text="pushed 200.0MB"))
    clock.now += 30
    assert [b.key for b in heart.due(clock.now)] == [""]  # only the build, silent since


def test_a_silent_build_beats_and_counts_its_silence() -> None:
    heart, clock, _ = beats()
    heart.observe(Event("notice", text="exporting"))
    clock.now += 10
    assert [b.seconds for b in heart.due(clock.now)] == [10.0]
    clock.now += 5
    assert heart.due(clock.now) == []
    clock.now += 5
    assert [b.seconds for b in heart.due(clock.now)] == [20.0]


def test_heartbeats_are_not_heard_as_news() -> None:
    heart, clock, _ = beats()
    clock.now += 10
    [beat] = heart.due(clock.now)
    heart.observe(beat)
    clock.now += 10
    assert [b.seconds for b in heart.due(clock.now)] == [20.0]


def test_the_thread_beats_and_stops_with_the_build() -> None:
    emitted: list[Event] = []
    heart = Heartbeat(emitted.append, 0.05)
    heart.start()
    heart.observe(Event("step.started", step=1, text="RUN sleep"))
    deadline = time.monotonic() + 10
    while not any(e.step == 1 for e in emitted) and time.monotonic() < deadline:
        time.sleep(0.01)
    heart.stop()
    heart.stop()  # idempotent
    assert any(e.kind == "heartbeat" and e.step == 1 for e in emitted)
    assert not [t for t in threading.enumerate() if t.name == "stepbuild-heartbeat"]


def test_make_progress_starts_one_heartbeat_that_close_stops() -> None:
    import io

    out = io.StringIO()
    progress = make_progress("plain", out, heartbeat=0.05)
    assert [t.name for t in threading.enumerate()].count("stepbuild-heartbeat") == 1
    deadline = time.monotonic() + 10
    while "still working" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    progress.close()
    progress.close()
    assert "still working" in out.getvalue()
    assert not [t for t in threading.enumerate() if t.name == "stepbuild-heartbeat"]


def test_the_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert interval_from_environment() == DEFAULT_INTERVAL
    monkeypatch.setenv(ENV, "0.5")
    assert interval_from_environment() == 0.5
    for bad in ("soon", "0", "-1", "inf"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(UsageError):
            interval_from_environment()
