"""A prepared step: what a RUN/COPY/ADD/WORKDIR depends on (its key) and what it will do.

`PreparedStep.work` is typed per kind of step: `run.RunWork` for RUN, `copy.CopyWork` for
COPY and ADD, `workdir.WorkdirWork` for WORKDIR (it makes its directory); each is made by its
module's `prepare` and read only by its `perform`.
`Workspace` is where a step that missed the cache runs (`lifecycle.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepbuild.build.state import ImageState
from stepbuild.frontend import instructions as ins

if TYPE_CHECKING:
    from stepbuild.build.copy import CopyWork
    from stepbuild.build.run import RunWork
    from stepbuild.build.workdir import WorkdirWork


@dataclass(frozen=True, slots=True)
class PreparedStep:
    """A cached step ready to run: its key, its inputs (recorded with the cache entry so that
    a miss can be explained), its history text, the expanded values needed to run it, and the
    other images whose files it reads when it runs (`COPY --from`, `RUN --mount from=`).
    `link` (COPY/ADD --link): the step is made on an empty root and reads none of the
    parent's layers."""

    instruction: ins.Run | ins.Copy | ins.Add | ins.Workdir
    key: str
    inputs: dict[str, Any]
    created_by: str
    work: RunWork | CopyWork | WorkdirWork
    reads: tuple[ImageState, ...] = ()
    link: bool = False


@dataclass(frozen=True, slots=True)
class Workspace:
    """The temporary dir a step that missed the cache runs in, and the layer dirs (top first)
    its overlay is mounted on. The overlay's upper dir, `upper`, holds what the step changed
    once it has run; `sandbox.host.mounted` lays the dir out."""

    tmp: Path
    lowers: tuple[Path, ...]

    @property
    def upper(self) -> Path:
        return self.tmp / "upper"
