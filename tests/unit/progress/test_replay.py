"""replay.py: a no-op rebuild's transcript read back into the events of a cached build."""

from __future__ import annotations

import io

from stepbuild.progress import Progress
from stepbuild.progress.replay import replayed_events
from tests.unit.progress.scripted import DIGEST


class Instruction:
    def __init__(self, text: str) -> None:
        self.text = text
        self.loc = None


def test_the_events_of_a_replayed_multi_stage_build() -> None:
    progress = Progress(io.StringIO())  # the transcript a full build leaves
    progress.isolation("isolation: namespaces", ())
    progress.step("one", 1, Instruction("FROM base AS one"))
    progress.step("one", 2, Instruction("RUN make"))
    progress.cached("one")
    progress.step("1", 3, Instruction("FROM base"))
    progress.step("1", 1000, Instruction("COPY --from=one /out /out"))
    progress.cached("1")
    events = replayed_events(progress.transcript, ["a warning"], DIGEST, ["app"])
    assert [(e.kind, e.stage, e.step, e.text) for e in events] == [
        ("build.started", "", None, "isolation: namespaces"),
        ("warning", "", None, "a warning"),
        ("step.started", "one", 1, "FROM base AS one"),
        ("step.started", "one", 2, "RUN make"),
        ("step.cached", "one", 2, ""),
        ("step.started", "1", 3, "FROM base"),
        ("step.started", "1", 1000, "COPY --from=one /out /out"),
        ("step.cached", "1", 1000, ""),
        ("build.done", "", None, DIGEST),
    ]
    assert (events[-1].steps, events[-1].cached, events[-1].tags) == (4, 2, ("app",))


def test_without_an_isolation_line_the_warnings_come_first() -> None:
    events = replayed_events([("", "#1   FROM base"), ("", "     CACHED")], ["w"], DIGEST, [])
    assert [e.kind for e in events] == ["warning", "step.started", "step.cached", "build.done"]
