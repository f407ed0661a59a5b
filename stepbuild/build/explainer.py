"""Explaining a build's misses as it runs, and keeping what `stepbuild why` prints.

One `Explainer` per build attempt (`builder._Run` makes it; `lifecycle.py` calls it):

- `hit(...)`: a step was cached. Nothing is computed: a hit costs a list append.
- `miss(...)`: a step will run. Its material is made (build/explain.py) and compared with
  the closest earlier result for the same step: the step at the same place (stage, n-th
  cached step) of the last build of the same tag (or, untagged, Stepfile and target); else
  the newest saved material of a step with the same instruction in the same stage; else the
  team cache's record of it (--cache-from), when it carries material. The reason is one line.
- `ran(...)`: the step's record is committed: its material is saved with it.
- `finish()`: the build is over: its steps (key, hit or why it ran) are saved as the last
  build of each tag, for the next build's comparisons and for `stepbuild why`.

Thread-safe: stages may run at the same time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stepbuild.build import explain
    from stepbuild.build.plan import Scope
    from stepbuild.build.state import ImageState
    from stepbuild.build.step import PreparedStep
    from stepbuild.frontend import instructions as ins
    from stepbuild.store.explain import ExplainRecords

# Looks a step up in the team cache by its place: the material a colleague exported for
# the step (stage name, instruction text) and its key, or None.
TeamMaterial = Callable[[Mapping[str, Any]], "tuple[str, dict[str, Any]] | None"]


@dataclass(frozen=True, slots=True)
class Miss:
    """A step about to run: its material (saved once it ran) and why it runs."""

    material: dict[str, Any]
    reason: str


class Explainer:
    """See the module docstring. `names`: the build's tags, or its Stepfile's identity;
    `stage_names`: each stage's name ("" for none); `bases`: stage → (base image name,
    digest), filled in by the builder as stages start; `team_refs`: the --cache-from
    sources, described; `team_material`: looks a step up in them."""

    def __init__(self, records: ExplainRecords, filename: str, names: list[str],
                 stage_names: list[str], bases: Mapping[int, tuple[str, str]], *,
                 verbose: bool = False, team_refs: tuple[str, ...] = (),
                 team_material: TeamMaterial | None = None) -> None:
        self.records = records
        self.filename = os.path.basename(filename)  # as the issue reads: `Stepfile:5`
        self.names = names
        self.stage_names = stage_names
        self.bases = bases
        self.verbose = verbose
        self.team_refs = team_refs
        self.team_material = team_material
        self._lock = threading.Lock()
        self._steps: list[dict[str, Any]] = []
        # stage → (its cached steps so far, the line of the last one, whether it ran)
        self._last: dict[int, tuple[int, int | None, bool]] = {}
        self._baseline: list[dict[str, Any]] | None = None

    def per_platform(self, platform: str) -> None:
        """One platform of a multi-platform build: its last build is kept per platform (the
        builder gives such a build no tags; `why` does not know it by its -t names)."""
        self.names = [f"{name} {platform}" for name in self.names]

    def hit(self, stage: int, label: str, instruction: ins.Instruction, key: str) -> None:
        self._note(stage, label, instruction, key, None)

    def miss(self, stage: int, label: str, step: PreparedStep, state: ImageState,
             scope: Scope, *, uncached: bool) -> Miss:
        """The material and the reason of a step that runs (`uncached`: --no-cache or
        --no-cache-filter made it run)."""
        from stepbuild.build import explain  # only a miss needs it: a hit imports nothing

        instruction = step.instruction
        with self._lock:
            place, parent_line, parent_ran = self._last.get(stage, (0, None, False))
        made = explain.material(
            stage=stage, stage_name=self.stage_names[stage], place=place,
            line=instruction.loc.line, text=" ".join(instruction.text.split()),
            inputs=step.inputs, parent=None if step.link else state.key,
            parent_line=parent_line if place else None, parent_ran=parent_ran,
            base=self.bases.get(stage),
            args=scope.args, selection=getattr(step.work, "selection", None))
        why = _one("--no-cache") if uncached else self._reason(made, step.key)
        self._note(stage, label, instruction, step.key, why)
        return Miss(made, why.full if self.verbose else why.short)

    def ran(self, key: str, miss: Miss) -> None:
        self.records.put_material(key, miss.material)

    def finish(self, digest: str) -> None:
        with self._lock:
            steps = list(self._steps)
        self.records.put_build(self.names, {"filename": self.filename, "names": self.names,
                                            "image": digest, "steps": steps})

    # --- helpers ------------------------------------------------------------------------------

    def _note(self, stage: int, label: str, instruction: ins.Instruction, key: str,
              why: explain.Reason | None) -> None:
        line = instruction.loc.line
        with self._lock:
            place = self._last.get(stage, (0, None, False))[0]
            self._last[stage] = (place + 1, line, why is not None)
            self._steps.append({"stage": stage, "label": label, "place": place, "line": line,
                                "text": instruction.text.split("\n", 1)[0], "key": key,
                                "cached": why is None,
                                "reason": why.short if why else None,
                                "detail": why.full if why else None})

    def _reason(self, made: dict[str, Any], key: str) -> explain.Reason:
        from stepbuild.build import explain

        before_key = self._baseline_key(made)
        before = self.records.material(before_key) if before_key else None
        if before_key == key:
            return _one("the same inputs as the last build, whose result is no longer in the"
                        " store")
        if before is None:
            before = self._nearest(made, key)
        where = ""
        if before is None and self.team_material is not None:
            found = self.team_material(made)
            if found is not None and found[0] != key:
                before, where = found[1], "the team cache held it under other inputs: "
        if before is None:
            return _one(self._nothing())
        why = explain.reason(made, before, self.filename)
        if why is None:
            return _one("the same inputs as an earlier build, whose result is no longer in"
                        " the store")
        return explain.Reason(where + why.short, where + why.full)

    def _baseline_key(self, made: Mapping[str, Any]) -> str | None:
        """The key of the step at the same place in the last build of the same tag."""
        if self._baseline is None:
            found = next((b for b in map(self.records.last_build, self.names) if b), None)
            steps = found.get("steps") if found else None
            self._baseline = steps if isinstance(steps, list) else []
        for step in self._baseline:
            if isinstance(step, dict) and step.get("stage") == made["stage"] and (
                    step.get("place") == made["place"]):
                key = step.get("key")
                return key if isinstance(key, str) else None
        return None

    def _nearest(self, made: Mapping[str, Any], key: str) -> dict[str, Any] | None:
        """The newest material of the same instruction in the same stage (by name, else by
        index), of another key."""
        best: tuple[float, dict[str, Any]] | None = None
        for other, found, when in self.records.scan_material():
            if other == key or found.get("text") != made["text"]:
                continue
            same_stage = (found.get("stage_name") == made["stage_name"] if made["stage_name"]
                          else found.get("stage") == made["stage"])
            if same_stage and (best is None or when > best[0]):
                best = (when, found)
        return best[1] if best else None

    def _nothing(self) -> str:
        if self.team_refs:
            return f"not in the store, nor in the team cache at {', '.join(self.team_refs)}"
        return "not in the store (no earlier build of this step)"


def _one(text: str) -> explain.Reason:
    from stepbuild.build.explain import Reason

    return Reason(text, text)


def make_explainer(store: object, filename: str, stage_names: list[str], tags: tuple[str, ...],
                   target: str | None, bases: Mapping[int, tuple[str, str]], *,
                   verbose: bool = False, team_refs: tuple[str, ...] = (),
                   team_material: TeamMaterial | None = None) -> Explainer | None:
    """The explainer of a build into `store`; None for a store that is not a `Store` (the
    builder's unit-test fakes). Its last build is saved under each tag; an untagged build
    under its Stepfile's name and target."""
    from stepbuild.store.explain import ExplainRecords
    from stepbuild.store.store import Store

    if not isinstance(store, Store):
        return None
    names = list(tags) or [f"stepfile {filename} target {target or ''}"]
    return Explainer(ExplainRecords(store), filename, names, stage_names, bases,
                     verbose=verbose, team_refs=team_refs, team_material=team_material)
