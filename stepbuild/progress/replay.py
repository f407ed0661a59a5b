"""The events of a no-op rebuild, made from the transcript its last full build recorded.

A no-op rebuild (cli/noop.py) prints what the full build printed, from `Progress.transcript`:
(label, plain line) pairs of the build's first line and of each step and its outcome. For a
rawjson stream the same lines are read back into events: `build.started`, the warnings, a
`step.started` and `step.cached` per step, `build.done`. The Stepfile line of a step is not
in the transcript, so replayed `step.started` events carry none.
"""

from __future__ import annotations

from collections.abc import Sequence

from stepbuild.progress.events import Event

__all__ = ["replayed_events"]


def replayed_events(transcript: Sequence[Sequence[str]], warnings: Sequence[str],
                    digest: str, names: Sequence[str]) -> list[Event]:
    """The events of a rebuild whose every step is CACHED (warnings after the first line,
    as in a full build)."""
    events: list[Event] = []
    steps = cached = 0
    step_of: dict[str, int] = {}
    for index, (label, line) in enumerate(transcript):
        if index == 0 and not line.startswith("#"):
            events.append(Event("build.started", text=line))
            events.extend(Event("warning", text=w) for w in warnings)
            continue
        if line.startswith("#"):
            number, _, text = line[1:].partition(" ")
            if not number.isdigit():
                continue
            steps += 1
            step_of[label] = int(number)
            events.append(Event("step.started", stage=label, step=int(number),
                                text=text.lstrip()))
        elif line.strip() == "CACHED":
            cached += 1
            events.append(Event("step.cached", stage=label, step=step_of.get(label)))
    if not events or events[0].kind != "build.started":
        events[:0] = [Event("warning", text=w) for w in warnings]
    events.append(Event("build.done", text=digest, steps=steps, cached=cached,
                        tags=tuple(names)))
    return events
