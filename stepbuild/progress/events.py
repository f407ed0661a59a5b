"""Build events: what happened, as plain data, for every view of a build.

Every view of a build (the plain log, the live terminal view, the rawjson stream, a Python
caller's callback through `stepbuild.api`) is fed the same `Event`s, made in one place
(`Progress`). An event is a frozen dataclass; `as_json()` is its rawjson form, whose keys and
kinds are versioned by `SCHEMA_VERSION` (docs/progress-events.md): a key or kind may be added
within a version, never renamed or removed.

Kinds (`Event.kind`):
- `build.started`: `text` names the isolation mode;
- `step.started`: `stage`, `step` (the build's 1-based step number), `text` (the instruction's
  first line), `line` (its line in the Stepfile, when known);
- `step.cached` / `step.done` (`seconds`; with --explain `reason`: why the step missed the
  cache, one line) / `step.error` (`text`: the message,
  `exit_code`: a RUN's exit status);
- `step.log`: one line a RUN printed (`text`, without its newline; present even when empty);
- `transfer`: a blob moving to or from a registry (`key`: the short digest, `text`: its
  state, `current`/`total`: bytes, when known). A state that is a verb in -ing
  (`compressing (gzip)`, `pushing`, `downloading 3.4MB`) is work under way; any other
  (`pushed 3.4MB`, `exists`, `mounted from …`) ends that blob's transfer;
- `heartbeat`: nothing was heard from `stage`/`step` (or the whole build) for a while
  (`seconds`: since when);
- `note` (-v detail), `notice`, `warning`;
- `image.pushed`: an image is in a registry (`ref`: where, `text`: the digest the registry
  serves it under: what a pipeline signs and deploys);
- `build.done` (`text`: the image digest, `steps`, `cached`, `tags`) / `build.error`
  (`text`: the message, `exit_code`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SCHEMA_VERSION", "Event", "EventCallback", "KINDS", "now", "under_way"]

SCHEMA_VERSION = 1
KINDS = frozenset({
    "build.started", "step.started", "step.cached", "step.done", "step.error", "step.log",
    "transfer", "heartbeat", "note", "notice", "warning", "build.done", "build.error",
    "image.pushed",
})


def now() -> float:
    """Wall-clock seconds since the epoch: what `Event.time` holds."""
    return time.time()


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened during a build. Fields a kind does not use keep their
    defaults and are left out of `as_json()`."""

    kind: str
    time: float = field(default_factory=now)
    stage: str = ""          # the stage's label ("" for the whole build, or a single stage)
    step: int | None = None  # the build's step number
    text: str = ""
    line: int | None = None  # Stepfile line of the step's instruction
    seconds: float | None = None
    key: str = ""            # transfer: the blob's short digest
    current: int | None = None
    total: int | None = None
    steps: int | None = None
    cached: int | None = None
    tags: tuple[str, ...] = ()
    exit_code: int | None = None
    ref: str = ""            # image.pushed: the registry reference pushed to
    reason: str = ""         # step.done with --explain: why the step ran

    def as_json(self) -> dict[str, Any]:
        """The rawjson object: `v` (schema version), `kind`, `time`, and every field set."""
        data: dict[str, Any] = {"v": SCHEMA_VERSION, "kind": self.kind, "time": self.time}
        for name in ("stage", "step", "text", "line", "seconds", "key", "current", "total",
                     "steps", "cached", "exit_code", "ref", "reason"):
            value = getattr(self, name)
            if value not in (None, "") or (name == "text" and self.kind == "step.log"):
                data[name] = value
        if self.tags:
            data["tags"] = list(self.tags)
        return data


EventCallback = Callable[[Event], None]


def under_way(event: Event) -> bool:
    """A `transfer` event whose blob is still moving: bytes are counted, or its state is a
    verb in -ing (the convention of distribution/display.py's states)."""
    verb = event.text.split(" ", 1)[0]
    return event.kind == "transfer" and (event.current is not None or verb.endswith("ing"))
