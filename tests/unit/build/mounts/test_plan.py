"""Planning RUN --mounts: expansion, targets, checks against the build options and stages,
key inputs (never a secret's value), and the observer that hears of cache mounts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stepbuild.build.mounts.plan import (
    PlannedMount,
    Sources,
    key_inputs,
    plan,
)
from stepbuild.build.mounts.secrets import SecretSource
from stepbuild.build.plan import Scope
from stepbuild.build.state import ImageState
from stepbuild.errors import PlanError, SourcePosition, StepbuildError
from stepbuild.frontend import instructions as ins
from stepbuild.frontend.parse import parse
from stepbuild.store.layout import cache_mount_name


def run_of(text: str) -> ins.Run:
    run = parse("FROM scratch\n" + text).instructions[1]
    assert isinstance(run, ins.Run)
    return run


@dataclass
class FakeSelection:
    name: str

    def digest(self) -> str:
        return "digest-of-" + self.name


@dataclass
class FakeContext:
    selected: list[str] = field(default_factory=list)

    def select(self, sources: list[str]) -> FakeSelection:
        self.selected += sources
        return FakeSelection(sources[0])


def sources(**kwargs: Any) -> Sources:
    states = {"build": ImageState(diff_ids=("sha256:" + "a" * 64,))}

    def error(message: str) -> StepbuildError:
        return PlanError(message, SourcePosition("Stepfile", 2, 1, "RUN ..."))

    return Sources(kwargs.pop("context", FakeContext()), states.get, error, **kwargs)


def planned(text: str, workdir: str = "/work", scope: Scope | None = None,
            **kwargs: Any) -> tuple[PlannedMount, ...]:
    expand = (scope or Scope()).expand
    return plan(run_of(text), expand, workdir, sources(**kwargs))


def test_targets_are_resolved_against_workdir() -> None:
    mounts = planned("RUN --mount=type=cache,target=cache --mount=type=tmpfs,target=/t/../u/ x\n")
    assert [m.target for m in mounts] == ["/work/cache", "/u"]
    assert mounts[0].cache_id == "/work/cache"  # the id defaults to the target


@pytest.mark.parametrize("text, message", [
    ("RUN --mount=type=tmpfs,target=/ x\n", "invalid mount target"),
    ("RUN --mount=type=tmpfs,target=/a --mount=type=cache,target=/a/ x\n", "more than one"),
    ("RUN --mount=type=bind,from=nosuch,target=/x x\n", "no stage or image"),
    ("RUN --mount=type=cache,target=/c,sharing=$MODE x\n", "unsupported sharing"),
    ("RUN --mount=type=cache,target=/c,uid=$NOT_A_NUMBER x\n", "invalid uid"),
    ("RUN --mount=type=secret,id=tok,required x\n", "secret 'tok' is required"),
    ("RUN --mount=type=ssh,required=true x\n", "ssh agent 'default' is required"),
])
def test_bad_mounts_are_located_errors(text: str, message: str) -> None:
    scope = Scope(args={"MODE": "sometimes", "NOT_A_NUMBER": "abc"})
    with pytest.raises(PlanError, match=message) as info:
        planned(text, scope=scope)
    assert info.value.position is not None and info.value.position.line == 2


def test_options_are_expanded_then_parsed() -> None:
    scope = Scope(args={"ID": "pip", "DIR": "/root/.cache", "UID": "1000", "MODE": "locked"})
    (m,) = planned("RUN --mount=type=cache,id=$ID,target=${DIR}/pip,uid=$UID,sharing=$MODE x\n",
                   scope=scope)
    assert (m.cache_id, m.target, m.uid, m.sharing) == ("pip", "/root/.cache/pip", 1000,
                                                         "locked")


def test_cache_identity_and_key() -> None:
    (plain,) = planned("RUN --mount=type=cache,target=/c,id=x x\n")
    assert plain.identity == {"id": "x"}
    assert cache_mount_name(plain.identity) == cache_mount_name({"id": "x"})
    (seeded,) = planned("RUN --mount=type=cache,target=/c,id=x,from=build,source=deps,mode=0700"
                        " x\n")
    assert seeded.identity == {"id": "x", "from": seeded.state.key, "source": "deps",
                               "mode": 0o700}
    assert cache_mount_name(seeded.identity) != cache_mount_name(plain.identity)
    assert seeded.key["from"] == seeded.state.key and seeded.key["sharing"] == "shared"


def test_bind_key_names_the_selected_context_content_or_the_stage() -> None:
    context = FakeContext()
    bind, from_stage = planned("RUN --mount=type=bind,source=src/../go.mod,target=go.mod"
                               " --mount=type=bind,from=build,target=/b,rw x\n", context=context)
    assert context.selected == ["go.mod"]
    assert bind.key == {"type": "bind", "target": "/work/go.mod", "source": "go.mod",
                        "readonly": True, "from": None, "context": "digest-of-go.mod"}
    assert from_stage.readonly is False and from_stage.key["context"] is None
    assert from_stage.key["from"] == from_stage.state.key


def test_secret_defaults_and_key_never_hold_the_value(tmp_path: Path) -> None:
    (tmp_path / "v").write_text("the-secret-value")
    given = {"tok": SecretSource("file", str(tmp_path / "v"))}
    file_secret, env_secret, both, absent = planned(
        "RUN --mount=type=secret,id=tok --mount=type=secret,id=tok,env=TOKEN"
        " --mount=type=secret,target=/etc/tok,env=T2 --mount=type=secret,id=other x\n",
        secrets=given)
    assert (file_secret.target, file_secret.mode, file_secret.uid) == ("/run/secrets/tok",
                                                                        0o400, 0)
    assert env_secret.target == "" and env_secret.env == "TOKEN"
    assert both.cache_id == "tok" and both.target == "/etc/tok"
    assert absent.secret is None
    keys = repr(key_inputs([file_secret, env_secret, both, absent]))
    assert "the-secret-value" not in keys and str(tmp_path) not in keys


def test_ssh_defaults_count_the_steps_ssh_mounts() -> None:
    first, second = planned("RUN --mount=type=ssh --mount=type=ssh,id=gh,mode=0666 x\n",
                            ssh={"gh": "/tmp/gh.sock"})
    assert (first.target, first.cache_id, first.socket) == ("/run/buildkit/ssh_agent.0",
                                                            "default", "")
    assert (second.target, second.mode, second.socket) == ("/run/buildkit/ssh_agent.1", 0o666,
                                                           "/tmp/gh.sock")
    assert "/tmp/gh.sock" not in repr(second.key)


class PlannedObserver:
    def __init__(self) -> None:
        self.planned: list[PlannedMount] = []

    def cache_mount_planned(self, p: PlannedMount) -> None:
        self.planned.append(p)


def test_the_observer_hears_of_each_planned_cache_mount() -> None:
    observer = PlannedObserver()
    cache, _, _ = planned("RUN --mount=type=cache,target=/c,id=x --mount=type=tmpfs,target=/t"
                          " --mount=type=bind,target=/b x\n", observer=observer)
    assert observer.planned == [cache]
