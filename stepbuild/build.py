"""The builder loop: for each step, key → lookup → (execute → capture → commit) → next state.

`Builder.build` walks the stages of a Stepfile in order. Config-only instructions change the
image config (`image.py`); RUN, COPY and ADD are cached steps: their key (`keys.py`) covers the
parent state and everything the step sees; a hit reuses the recorded layer, a miss runs the
step in an overlay (`execute.py`), captures the upper dir as a layer (`layer.py`) and commits
it to the store before recording the key. Nothing is committed for a step that fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from stepbuild import instructions as ins
from stepbuild.errors import BuildError, PlanError, StepbuildError
from stepbuild.image import ImageState, healthcheck_json, scratch, set_env, timestamp
from stepbuild.images import load_state, save_state
from stepbuild.plan import (
    Scope,
    Stage,
    Stages,
    declare_arg,
    expand_at,
    global_args,
    located,
    split_stages,
)
from stepbuild.progress import Progress


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """What the user asked for on the command line."""

    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    no_cache: bool = False
    network: str = "host"
    source_date_epoch: int | None = None
    target: str | None = None


@dataclass(frozen=True, slots=True)
class BuildResult:
    manifest_digest: str
    state: ImageState
    steps: int
    cached: int


@dataclass(frozen=True, slots=True)
class StepResult:
    """What a cached step produced: its layer (or None) and when it was first built."""

    diff_id: str | None
    created: str


class Builder:
    """Builds Stepfiles into images in one store.

    Collaborators are injected: `store` (store.Store), `executor` (execute.Executor: runs RUN
    and COPY/ADD steps for real) and `progress` (progress.Progress). No globals.
    """

    def __init__(self, store: Any, executor: Any, progress: Progress,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.executor = executor
        self.progress = progress
        self.clock = clock

    def build(self, stepfile: ins.Stepfile, options: BuildOptions) -> BuildResult:
        stages = split_stages(stepfile)
        target = _target_stage(stages, options.target)
        globals_ = global_args(stages, options.build_args, stepfile.escape)
        run = _Run(self, stages, options, globals_, stepfile.escape)
        state = ImageState()
        for stage in stages.stages[: target.index + 1]:
            state = run.stage(stage)
            run.results[stage.index] = state
        descriptor = save_state(self.store, state)
        for tag in options.tags:
            self.store.tag(tag, descriptor)
        return BuildResult(descriptor.digest, state, run.steps, run.cached)


def _target_stage(stages: Stages, target: str | None) -> Stage:
    if target is None:
        return stages.stages[-1]
    stage = stages.find(target)
    if stage is None:
        names = ", ".join(s.name for s in stages.stages if s.name) or "none"
        raise PlanError(f"target stage {target!r} could not be found", hint=f"stages: {names}")
    return stage


class _Run:
    """The state of one build: per-stage results and counters."""

    def __init__(self, builder: Builder, stages: Stages, options: BuildOptions,
                 globals_: dict[str, str], escape: str) -> None:
        self.builder = builder
        self.stages = stages
        self.options = options
        self.globals = globals_
        self.escape = escape
        self.results: dict[int, ImageState] = {}
        self.steps = 0
        self.cached = 0
        self.total = sum(len(s.instructions) + 1 for s in stages.stages)

    # --- stages ------------------------------------------------------------------------------

    def stage(self, stage: Stage) -> ImageState:
        state = self.base(stage)
        scope = Scope(self.escape, env=state.env)
        for instruction in stage.instructions:
            self.steps += 1
            self.builder.progress.step(self.steps, self.total, stage, instruction)
            state, scope = self.apply(instruction, state, scope)
            scope = scope.with_env(state.env)
        return state

    def base(self, stage: Stage) -> ImageState:
        self.steps += 1
        self.builder.progress.step(self.steps, self.total, stage, stage.base)
        name = expand_at(Scope(self.escape, self.globals), self.stages.filename, stage.base,
                         stage.base.image)
        if name == "scratch":
            return scratch()
        earlier = self.stages.find(name)
        if earlier is not None and earlier.index < stage.index:
            return self.results[earlier.index]
        state = load_state(self.builder.store, name)
        if state is None:
            raise located(PlanError, self.stages.filename, stage.base,
                          f"base image {name!r} not found in the local store",
                          hint="build or load it first (stepbuild images lists them)")
        return state

    # --- one instruction ---------------------------------------------------------------------

    def apply(self, instruction: ins.Instruction, state: ImageState,
              scope: Scope) -> tuple[ImageState, Scope]:
        if isinstance(instruction, ins.Arg):
            for declaration in instruction.declarations:
                scope = declare_arg(scope, declaration, self.options.build_args, self.globals)
            return state.with_config(f"ARG {_arg_text(instruction)}"), scope
        if isinstance(instruction, ins.Run | ins.Copy | ins.Add):
            return self.cached_step(instruction, state, scope), scope
        try:
            return _apply_config(instruction, state, scope), scope
        except StepbuildError as exc:
            if isinstance(exc, PlanError) and exc.position is not None:
                raise
            raise located(PlanError, self.stages.filename, instruction, exc.message) from None

    def cached_step(self, instruction: ins.Run | ins.Copy | ins.Add, state: ImageState,
                    scope: Scope) -> ImageState:
        step = self.builder.executor.prepare(instruction, state, scope, self)
        record = None if self.options.no_cache else self.builder.store.get_cache(step.key)
        if record is not None:
            self.cached += 1
            self.builder.progress.cached()
            diff_ids = record.get("diff_ids") or [None]
            result = StepResult(diff_ids[0], record["created"])
        else:
            started = self.builder.clock()
            created = timestamp(self.options.source_date_epoch or started)
            diff_id = self.builder.executor.execute(step, state, self)
            self.builder.store.put_cache(step.key, {
                "diff_ids": [diff_id] if diff_id else [], "created": created,
                "created_by": step.created_by, "inputs": step.inputs,
            })
            self.builder.progress.done(self.builder.clock() - started)
            result = StepResult(diff_id, created)
        return state.with_layer(result.diff_id, step.created_by, result.created)


def _arg_text(instruction: ins.Arg) -> str:
    return " ".join(d.name if d.default is None else f"{d.name}={d.default}"
                    for d in instruction.declarations)


# --- config-only instructions -------------------------------------------------------------------


def _apply_config(instruction: ins.Instruction, state: ImageState, scope: Scope) -> ImageState:
    handler = _CONFIG_HANDLERS.get(type(instruction))
    if handler is None:
        raise BuildError(f"{type(instruction).__name__.upper()} is not supported here")
    return handler(instruction, state, scope)


def _env(instruction: Any, state: ImageState, scope: Scope) -> ImageState:
    pairs = {scope.expand(p.key): scope.expand(p.value) for p in instruction.pairs}
    env = set_env(state.env, pairs)
    text = " ".join(f"{k}={v}" for k, v in pairs.items())
    return state.with_config(f"ENV {text}", Env=env)


def _label(instruction: Any, state: ImageState, scope: Scope) -> ImageState:
    labels = dict(state.config.get("Labels") or {})
    pairs = {scope.expand(p.key): scope.expand(p.value) for p in instruction.pairs}
    labels.update(pairs)
    text = " ".join(f"{k}={v}" for k, v in pairs.items())
    return state.with_config(f"LABEL {text}", Labels=labels)


def _workdir(instruction: Any, state: ImageState, scope: Scope) -> ImageState:
    path = scope.expand(instruction.path)
    if not path.startswith("/"):
        path = state.workdir.rstrip("/") + "/" + path
    path = _clean_path(path)
    return state.with_config(f"WORKDIR {path}", WorkingDir=path)


def _clean_path(path: str) -> str:
    import posixpath

    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/")


def _user(instruction: Any, state: ImageState, scope: Scope) -> ImageState:
    user = scope.expand(instruction.user)
    return state.with_config(f"USER {user}", User=user)


def _expose(instruction: Any, state: ImageState, scope: Scope) -> ImageState:
    ports = dict(state.config.get("ExposedPorts") or {})
    words = [w for port in instruction.ports for w in scope.expand_words(port)]
    for word in words:
        ports[word if "/" in word else f"{word}/tcp"] = {}
    return state.with_config(f"EXPOSE {' '.join(words)}", ExposedPorts=ports)


def _volume(instruction: Any, state: ImageState, scope: Scope) -> ImageState:
    volumes = dict(state.config.get("Volumes") or {})
    paths = [scope.expand(p) for p in instruction.paths]
    for path in paths:
        volumes[path] = {}
    return state.with_config(f"VOLUME {paths}", Volumes=volumes)


def _command_argv(command: ins.Command, state: ImageState) -> list[str]:
    return [*state.shell, *command.args] if command.shell_form else list(command.args)


def _cmd(instruction: Any, state: ImageState, scope: Scope) -> ImageState:
    argv = _command_argv(instruction.command, state)
    return state.with_config(f"CMD {argv}", Cmd=argv)


def _entrypoint(instruction: Any, state: ImageState, scope: Scope) -> ImageState:
    argv = _command_argv(instruction.command, state) if instruction.command.args else None
    # Docker: setting ENTRYPOINT resets a CMD inherited from the base image.
    return state.with_config(f"ENTRYPOINT {argv or []}", Entrypoint=argv, Cmd=None)


def _shell(instruction: Any, state: ImageState, scope: Scope) -> ImageState:
    return state.with_config(f"SHELL {list(instruction.argv)}", Shell=list(instruction.argv))


def _stopsignal(instruction: Any, state: ImageState, scope: Scope) -> ImageState:
    signal = scope.expand(instruction.signal)
    return state.with_config(f"STOPSIGNAL {signal}", StopSignal=signal)


def _healthcheck(instruction: Any, state: ImageState, scope: Scope) -> ImageState:
    check = healthcheck_json(instruction.test, instruction.interval, instruction.timeout,
                             instruction.start_period, instruction.start_interval,
                             instruction.retries)
    return state.with_config(f"HEALTHCHECK {' '.join(instruction.test)}", Healthcheck=check)


def _onbuild(instruction: Any, state: ImageState, scope: Scope) -> ImageState:
    triggers = [*(state.config.get("OnBuild") or []), instruction.expression]
    return state.with_config(f"ONBUILD {instruction.expression}", OnBuild=triggers)


def _maintainer(instruction: Any, state: ImageState, scope: Scope) -> ImageState:
    # MAINTAINER sets the image's author (a top-level field of the config document).
    return replace(state.with_config(f"MAINTAINER {instruction.name}"), author=instruction.name)


_CONFIG_HANDLERS: dict[type, Callable[[Any, ImageState, Scope], ImageState]] = {
    ins.Env: _env, ins.Label: _label, ins.Workdir: _workdir, ins.User: _user,
    ins.Expose: _expose, ins.Volume: _volume, ins.Cmd: _cmd, ins.Entrypoint: _entrypoint,
    ins.Shell: _shell, ins.Stopsignal: _stopsignal, ins.Healthcheck: _healthcheck,
    ins.Onbuild: _onbuild, ins.Maintainer: _maintainer,
}

