"""A prepared step: what a RUN/COPY/ADD depends on (its key) and what it will do."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stepbuild.build.state import ImageState
from stepbuild.frontend import instructions as ins


@dataclass(frozen=True, slots=True)
class PreparedStep:
    """A cached step ready to run: its key, its inputs (recorded with the cache entry so that
    a miss can be explained), its history text, the expanded values needed to run it, and the
    other images whose files it reads when it runs (`COPY --from`, `RUN --mount from=`)."""

    instruction: ins.Run | ins.Copy | ins.Add
    key: str
    inputs: dict[str, Any]
    created_by: str
    work: dict[str, Any] = field(default_factory=dict)
    reads: tuple[ImageState, ...] = ()
