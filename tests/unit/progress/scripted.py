"""A scripted build, as events: what every view's unit test feeds its view.

Two stages: `one` runs a RUN that prints two lines (one of them empty) and is DONE; stage `1`
has a cached COPY, pulls a blob (states and bytes), and fails a RUN that printed a line.
"""

from __future__ import annotations

from stepbuild.progress.events import Event

DIGEST = "sha256:" + "ab" * 32


def successful() -> list[Event]:
    return [
        Event("build.started", text="isolation: namespaces"),
        Event("warning", text="build-args X were not consumed by any ARG in the Stepfile"),
        Event("step.started", stage="one", step=1, text="FROM base AS one", line=1),
        Event("step.started", stage="one", step=2, text="RUN echo hello", line=2),
        Event("step.log", stage="one", step=2, text="hello"),
        Event("step.log", stage="one", step=2, text=""),
        Event("step.done", stage="one", step=2, seconds=1.234),
        Event("step.started", stage="1", step=3, text="FROM base", line=3),
        Event("step.started", stage="1", step=4, text="COPY a /a", line=4),
        Event("step.cached", stage="1", step=4),
        Event("transfer", key="0123456789ab", text="downloading 2.0MB"),
        Event("transfer", key="0123456789ab", text="downloading", current=1_000_000,
              total=2_000_000),
        Event("transfer", key="0123456789ab", text="downloaded"),
        Event("notice", text="pulled reg/app:1"),
        Event("note", stage="1", step=4, text="the detail -v shows"),
        Event("build.done", text=DIGEST, steps=4, cached=1, tags=("app",)),
    ]


def failing() -> list[Event]:
    return [
        Event("build.started", text="isolation: namespaces"),
        Event("step.started", step=1, text="FROM base", line=1),
        Event("step.started", step=2, text="RUN echo oops && false", line=2),
        Event("step.log", step=2, text="oops"),
        Event("step.error", step=2, text="Stepfile:2:1: RUN failed with exit status 1"),
        Event("build.error", text="Stepfile:2:1: RUN failed with exit status 1", exit_code=1),
    ]
