"""tty.py: the live view drawn into a StringIO that rich takes for a terminal; the final
frame, the collapsed steps, the failed step's last lines, colour only where wanted."""

from __future__ import annotations

import io
import re
import threading
import time

import pytest

from stepbuild.progress.events import Event
from stepbuild.progress.tty import TtyView
from tests.unit.progress.scripted import DIGEST, failing, successful

CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SHOW_CURSOR, HIDE_CURSOR = "\x1b[?25h", "\x1b[?25l"
# an SGR sequence that sets a colour (30-38, 40-48, 90-97, 100-107), not only bold or dim
COLOUR = re.compile(r"\x1b\[(?:[0-9]+;)*(?:3[0-8]|4[0-8]|9[0-7]|10[0-7])(?:;[0-9]+)*m")


def drawn(events: list[Event], *, terminal: bool = True) -> str:
    out = io.StringIO()
    view = TtyView(out, force_terminal=terminal)
    for event in events:
        view(event)
    view.close()
    return out.getvalue()


def lines(text: str) -> list[str]:
    """The text of each line as a terminal leaves it (a carriage return starts it again)."""
    return [CSI.sub("", line.split("\r")[-1]).rstrip() for line in text.split("\n")]


@pytest.fixture(autouse=True)
def _colour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "100")


def test_a_build_ends_with_collapsed_steps_and_the_summary() -> None:
    threads = set(threading.enumerate())
    text = drawn(successful())
    shown = lines(text)
    assert "[one] #2 RUN echo hello  DONE 1.2s" in shown
    assert "[1] #4 COPY a /a  CACHED" in shown
    assert "warning: build-args X were not consumed by any ARG in the Stepfile" in shown
    assert "0123456789ab: downloaded" in shown
    assert [line for line in shown if line][-1] == f"built {DIGEST} (4 steps, 1 cached), tagged app"
    assert text.count(HIDE_CURSOR) == 1 and text.rindex(SHOW_CURSOR) > text.rindex(HIDE_CURSOR)
    assert COLOUR.search(text)  # a terminal with colours: colour
    assert set(threading.enumerate()) == threads  # rich's refresh thread is gone


def test_a_failed_step_keeps_its_last_lines_above_the_error() -> None:
    shown = lines(drawn(failing()))
    failed = shown.index("#2 RUN echo oops && false  ERROR")
    assert shown[failed + 1] == "  | oops"


def test_running_steps_show_a_timer_and_their_last_lines() -> None:
    out = io.StringIO()
    view = TtyView(out, force_terminal=True, tail=2)
    view(Event("step.started", step=1, text="RUN make"))
    for n in range(5):
        view(Event("step.log", step=1, text=f"line {n}"))
    frame = [str(part) for part in view._frame().renderables]
    view.close()
    assert re.fullmatch(r"#1 RUN make  \d+\.\ds", frame[0])
    assert frame[1:] == ["  | line 3", "  | line 4"]


def test_a_moving_blob_has_a_bar_with_size_rate_and_eta() -> None:
    out = io.StringIO()
    view = TtyView(out, force_terminal=True)
    view(Event("transfer", key="0123456789ab", text="pushing", current=10_000_000,
               total=200_000_000))
    time.sleep(0.05)  # two samples apart in time: a rate (whatever it is) and an ETA
    view(Event("transfer", key="0123456789ab", text="pushing", current=50_000_000,
               total=200_000_000))
    view._live.refresh()  # draw now, not at the next tick
    bar = CSI.sub("", out.getvalue()).split("\r")[-1]
    view(Event("transfer", key="0123456789ab", text="pushed 200.0MB"))
    view.close()
    assert re.search(r"0123456789ab pushing ━+.* 50\.0/200\.0 MB [0-9.]+ [kMG]?B/s "
                     r"\d+:\d\d:\d\d", bar), bar
    assert "0123456789ab: pushed 200.0MB" in lines(out.getvalue())


def test_no_colour_with_no_color_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    text = drawn([*successful(), *failing()])
    assert "\x1b[" in text  # still a terminal: drawn in place
    assert not COLOUR.search(text)


def test_off_a_terminal_no_escape_codes_at_all() -> None:
    text = drawn(successful(), terminal=False)
    assert "\x1b" not in text
    assert f"built {DIGEST}" in text


def test_events_after_the_end_are_ignored_and_close_is_idempotent() -> None:
    out = io.StringIO()
    view = TtyView(out, force_terminal=True)
    view(Event("build.error", text="bad", exit_code=1))
    end = out.getvalue()
    view(Event("warning", text="late"))
    view.close()
    assert out.getvalue() == end


def test_a_long_instruction_is_cut_so_its_outcome_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    text = "RUN " + "x" * 100
    shown = lines(drawn([Event("step.started", step=7, text=text),
                         Event("step.done", step=7, seconds=2.0)]))
    [line] = [line for line in shown if line.startswith("#7 ")]
    assert line.endswith("…  DONE 2.0s") and len(line) == 40
