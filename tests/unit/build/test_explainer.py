"""build/explainer.py: a hit computes nothing; a miss is compared with the step at the same
place in the last build of the tag, else the newest material of the same instruction in the
stage, else the team cache's; what `finish` saves is what `why` prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stepbuild.build import keys
from stepbuild.build.explainer import Explainer, make_explainer
from stepbuild.build.plan import Scope
from stepbuild.build.run import RunWork
from stepbuild.build.state import scratch
from stepbuild.build.step import PreparedStep
from stepbuild.cli.explain_flags import why_lines
from stepbuild.frontend import instructions as ins
from stepbuild.store.explain import LAST, ExplainRecords
from stepbuild.store.store import Store


class Refused:
    """Records that fail the test if asked anything (a hit must not read or write)."""

    def __getattr__(self, name: str) -> Any:
        pytest.fail(f"a hit asked the records for {name}")


def run_step(line: int, text: str, env: tuple[str, ...] = ()) -> PreparedStep:
    instruction = ins.Run(ins.Location(line, 1, line), text,
                          ins.Command((text.removeprefix("RUN "),), True))
    inputs = {"op": "run", "argv": ["/bin/sh", "-c", text], "env": list(env)}
    return PreparedStep(instruction, keys.digest(inputs), inputs, text,
                        RunWork(("/bin/sh", "-c", text), env, "private"))


def explainer(records: Any, names: list[str], team: Any = None) -> Explainer:
    return Explainer(records, "/ctx/Stepfile", names, [""], {0: ("base", "sha256:" + "1" * 64)},
                     team_refs=("type=local,dir=/shared",) if team else (), team_material=team)


def test_a_hit_computes_nothing() -> None:
    built = explainer(Refused(), ["app"])
    step = run_step(2, "RUN make")
    built.hit(0, "", step.instruction, step.key)
    built.hit(0, "", step.instruction, step.key)  # nothing read, nothing written


def test_a_miss_is_compared_with_the_last_build_of_the_tag(tmp_path: Path) -> None:
    records = ExplainRecords(Store(tmp_path / "store"))
    state, scope = scratch(), Scope(args={"V": "1"})
    first = explainer(records, ["app"])
    one = run_step(2, "RUN echo $V", ("V=1",))
    miss = first.miss(0, "", one, state, scope, uncached=False)
    assert miss.reason == "not in the store (no earlier build of this step)"
    first.ran(one.key, miss)
    first.finish("sha256:" + "2" * 64)

    second = explainer(records, ["app"])
    two = run_step(2, "RUN echo $V", ("V=2",))
    assert second.miss(0, "", two, state, Scope(args={"V": "2"}), uncached=False).reason == \
        "ARG V changed 1 → 2"
    second.finish("sha256:" + "3" * 64)
    saved = records.last_build("app")
    assert saved is not None and records.last_build(LAST) == saved
    assert why_lines(saved) == [f"last build: sha256:{'3' * 64} (Stepfile)",
                                "Stepfile:2 RUN echo $V — ARG V changed 1 → 2"]


def test_without_a_last_build_the_newest_same_instruction(tmp_path: Path) -> None:
    records = ExplainRecords(Store(tmp_path / "store"))
    first = explainer(records, ["one"])
    one = run_step(3, "RUN make", ("A=1",))
    first.ran(one.key, first.miss(0, "", one, scratch(), Scope(), uncached=False))
    other = explainer(records, ["two"])  # another tag: no last build, same instruction
    two = run_step(3, "RUN make", ("A=2",))
    assert other.miss(0, "", two, scratch(), Scope(), uncached=False).reason == "ENV A changed"


def test_the_team_cache_is_asked_last(tmp_path: Path) -> None:
    records = ExplainRecords(Store(tmp_path / "store"))
    theirs = run_step(2, "RUN make", ("A=1",))
    held = explainer(records, ["x"]).miss(0, "", theirs, scratch(), Scope(), uncached=False)
    asked: list[dict[str, Any]] = []

    def team(made: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        asked.append(made)
        return theirs.key, held.material

    mine = run_step(2, "RUN make", ("A=2",))
    assert explainer(records, ["y"], team).miss(0, "", mine, scratch(), Scope(),
                                                 uncached=False).reason == \
        "the team cache held it under other inputs: ENV A changed"
    assert [m["text"] for m in asked] == ["RUN make"]
    nothing = explainer(records, ["z"], lambda made: None)
    assert nothing.miss(0, "", run_step(2, "RUN other"), scratch(), Scope(),
                        uncached=False).reason == \
        "not in the store, nor in the team cache at type=local,dir=/shared"


def test_no_cache_and_a_pruned_result(tmp_path: Path) -> None:
    records = ExplainRecords(Store(tmp_path / "store"))
    step = run_step(2, "RUN make")
    first = explainer(records, ["app"])
    assert first.miss(0, "", step, scratch(), Scope(), uncached=True).reason == "--no-cache"
    first.finish("sha256:" + "4" * 64)
    again = explainer(records, ["app"])  # same key: its record must have been pruned
    assert again.miss(0, "", step, scratch(), Scope(), uncached=False).reason == \
        "the same inputs as the last build, whose result is no longer in the store"


def test_no_explainer_for_a_fake_store() -> None:
    assert make_explainer(object(), "Stepfile", [""], (), None, {}) is None
