"""plain.py: the build log, line for line as before the views existed; quiet keeps warnings."""

from __future__ import annotations

import io

from stepbuild.progress import Progress
from stepbuild.progress.events import Event
from stepbuild.progress.plain import PlainView, line_of
from tests.unit.progress.scripted import DIGEST, failing, successful


def drawn(events: list[Event], **options: bool) -> str:
    out = io.StringIO()
    view = PlainView(out, **options)
    for event in events:
        view(event)
    view.close()
    return out.getvalue()


def test_the_log_of_a_build() -> None:
    assert drawn(successful()) == (
        "isolation: namespaces\n"
        "warning: build-args X were not consumed by any ARG in the Stepfile\n"
        "[one] #1   FROM base AS one\n"
        "[one] #2   RUN echo hello\n"
        "[one]   | hello\n"
        "[one]   | \n"
        "[one]      DONE 1.23s\n"
        "[1] #3   FROM base\n"
        "[1] #4   COPY a /a\n"
        "[1]      CACHED\n"
        "0123456789ab: downloading 2.0MB\n"
        "0123456789ab: downloaded\n"
        "pulled reg/app:1\n"
        f"built {DIGEST} (4 steps, 1 cached), tagged app\n")


def test_verbose_adds_the_notes() -> None:
    assert "[1]      the detail -v shows\n" in drawn(successful(), verbose=True)


def test_the_error_is_left_to_the_cli() -> None:
    log = drawn(failing())
    assert log.endswith("  | oops\n")
    assert "exit status" not in log


def test_quiet_keeps_only_warnings() -> None:
    assert drawn([*successful(), *failing()], quiet=True) == (
        "warning: build-args X were not consumed by any ARG in the Stepfile\n")


def test_heartbeat_lines() -> None:
    step = Event("heartbeat", stage="build", step=5, text="RUN sleep 60", seconds=20.4)
    push = Event("heartbeat", key="12ab34cd56ef", text="pushing", current=80_200_000,
                 total=200_000_000, seconds=11.2)
    compressing = Event("heartbeat", key="12ab34cd56ef", text="compressing", seconds=10)
    whole = Event("heartbeat", seconds=12)
    assert drawn([step, push, compressing, whole]) == (
        "[build]      #5 still running: 20s\n"
        "still pushing 12ab34cd56ef…: 80.2MB/200.0MB, 11s\n"
        "still compressing 12ab34cd56ef…: 10s\n"
        "still working: 12s since the last line\n")


def test_byte_counts_are_not_lines() -> None:
    moving = Event("transfer", key="k", text="pushing", current=1, total=2)
    assert line_of(moving) is None


class Instruction:
    def __init__(self, text: str) -> None:
        self.text = text
        self.loc = None


def test_progress_draws_the_plain_log_by_default_and_keeps_the_transcript() -> None:
    out = io.StringIO()
    progress = Progress(out)
    progress.isolation("isolation: namespaces", ())
    progress.step("", 1, Instruction("RUN printf 'a\\nb'\nmore lines"))
    progress.output("", b"a\nb")
    progress.done("", 0.5)
    progress.summary(1, 0, DIGEST, [])
    progress.close()
    assert out.getvalue() == ("isolation: namespaces\n#1   RUN printf 'a\\nb'\n  | a\n  | b\n"
                              f"     DONE 0.50s\nbuilt {DIGEST} (1 steps, 0 cached)\n")
    assert progress.transcript == [("", "isolation: namespaces"),
                                   ("", "#1   RUN printf 'a\\nb'"), ("", "     DONE 0.50s")]


def test_listeners_get_every_event_the_view_gets() -> None:
    seen: list[str] = []
    progress = Progress(io.StringIO(), quiet=True, listeners=[lambda e: seen.append(e.kind)])
    progress.step("", 1, Instruction("RUN true"))
    progress.failed("", "it failed")
    progress.build_failed("it failed", 1)
    assert seen == ["step.started", "step.error", "build.error"]


def test_explain_prints_the_reason_under_done() -> None:
    events = [Event("step.done", stage="app", step=2, seconds=0.5,
                    reason="ARG VERSION changed 1.2 → 1.3"),
              Event("step.done", step=3, seconds=0.25)]
    assert drawn(events) == ("[app]      DONE 0.50s\n"
                             "[app]      why: ARG VERSION changed 1.2 → 1.3\n"
                             "     DONE 0.25s\n")


def test_done_carries_a_reason_only_with_explain() -> None:
    seen: list[Event] = []
    progress = Progress(io.StringIO(), listeners=[seen.append])
    progress.done("", 1.0, reason="ENV PATH changed")
    progress.explain = True
    progress.done("", 1.0, reason="ENV PATH changed")
    assert [e.reason for e in seen] == ["", "ENV PATH changed"]
