"""Config-only instructions: each takes the image state to its next one, with no layer.

ENV, LABEL, WORKDIR, USER, EXPOSE, VOLUME, CMD, ENTRYPOINT, SHELL, STOPSIGNAL, HEALTHCHECK,
ONBUILD and MAINTAINER change the image config (`state.py`) and add a history entry; ARG only
adds history (its scoping is `plan.py`'s); a base image's ONBUILD triggers become instructions
of the child build here. Pure functions of (instruction, state, scope): no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from stepbuild.build.plan import Scope, located
from stepbuild.build.state import ImageState, healthcheck_json, set_env
from stepbuild.errors import BuildError, ParseError, PlanError
from stepbuild.frontend import instructions as ins
from stepbuild.frontend.syntax import go_quote

__all__ = ["apply_config", "arg_text", "onbuild_triggers", "with_labels", "workdir_path"]


def onbuild_triggers(state: ImageState, filename: str, base: ins.From
                     ) -> tuple[ImageState, tuple[ins.Instruction, ...]]:
    """The base image's ONBUILD triggers as instructions, and the state without them.

    Triggers run once: in the child build, before its own instructions, in order; the new
    image does not inherit them (Docker clears OnBuild). A trigger that does not parse is an
    error at the FROM that brought it.
    """
    expressions = list(state.config.get("OnBuild") or [])
    if not expressions:
        return state, ()
    from stepbuild.frontend.parse import parse

    triggers: list[ins.Instruction] = []
    for expression in expressions:
        try:
            parsed = parse(expression, f"{filename} (ONBUILD of {base.image})")
        except ParseError as exc:
            raise located(PlanError, filename, base,
                          f"ONBUILD trigger of {base.image} is invalid: {exc.message}") from None
        triggers += [replace(i, loc=base.loc) for i in parsed.instructions]
    config = {k: v for k, v in state.config.items() if k != "OnBuild"}
    return replace(state, config=config), tuple(triggers)


def arg_text(instruction: ins.Arg) -> str:
    """An ARG's history text: its declarations as written, defaults unexpanded."""
    return " ".join(d.name if d.default is None else f"{d.name}={d.default}"
                    for d in instruction.declarations)


# --- config-only instructions -------------------------------------------------------------------


def apply_config(instruction: ins.Instruction, state: ImageState, scope: Scope) -> ImageState:
    """The image state after a config-only instruction, expanded in `scope`; BuildError for
    an instruction that is not one."""
    handler = _CONFIG_HANDLERS.get(type(instruction))
    if handler is None:
        raise BuildError(f"{type(instruction).__name__.upper()} is not supported here")
    return handler(instruction, state, scope)


def _env(instruction: ins.Env, state: ImageState, scope: Scope) -> ImageState:
    pairs = {scope.expand(p.key): scope.expand(p.value) for p in instruction.pairs}
    env = set_env(state.env, pairs)
    text = " ".join(f"{k}={v}" for k, v in pairs.items())
    return state.with_config(f"ENV {text}", Env=env)


def _label(instruction: ins.Label, state: ImageState, scope: Scope) -> ImageState:
    labels = dict(state.config.get("Labels") or {})
    pairs = {scope.expand(p.key): scope.expand(p.value) for p in instruction.pairs}
    labels.update(pairs)
    text = " ".join(f"{k}={v}" for k, v in pairs.items())
    return state.with_config(f"LABEL {text}", Labels=labels)


def with_labels(state: ImageState, labels: Mapping[str, str]) -> ImageState:
    """`build --label`s over the config's Labels, with no history entry (as BuildKit's
    Dockerfile frontend applies them to the final image only)."""
    if not labels:
        return state
    config = {**state.config, "Labels": {**(state.config.get("Labels") or {}), **labels}}
    return replace(state, config=config)


def workdir_path(instruction: ins.Workdir, state: ImageState, scope: Scope) -> str:
    """WORKDIR's directory: expanded, relative to the current one, clean (BuildKit's
    NormalizeWorkdir)."""
    path = scope.expand(instruction.path)
    if not path.startswith("/"):
        path = state.workdir.rstrip("/") + "/" + path
    return _clean_path(path)


def _workdir(instruction: ins.Workdir, state: ImageState, scope: Scope) -> ImageState:
    # The config half of WORKDIR; the builder makes the directory (build/workdir.py).
    path = workdir_path(instruction, state, scope)
    return state.with_config(f"WORKDIR {path}", WorkingDir=path)


def _clean_path(path: str) -> str:
    import posixpath

    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/")


def _user(instruction: ins.User, state: ImageState, scope: Scope) -> ImageState:
    user = scope.expand(instruction.user)
    return state.with_config(f"USER {user}", User=user)


def _expose(instruction: ins.Expose, state: ImageState, scope: Scope) -> ImageState:
    ports = dict(state.config.get("ExposedPorts") or {})
    words = [w for port in instruction.ports for w in scope.expand_words(port)]
    for word in words:
        ports[word if "/" in word else f"{word}/tcp"] = {}
    return state.with_config(f"EXPOSE {' '.join(words)}", ExposedPorts=ports)


def _volume(instruction: ins.Volume, state: ImageState, scope: Scope) -> ImageState:
    volumes = dict(state.config.get("Volumes") or {})
    paths = [scope.expand(p) for p in instruction.paths]
    for path in paths:
        volumes[path] = {}
    return state.with_config(f"VOLUME {_listed(paths)}", Volumes=volumes)


# History texts are BuildKit's, which formats lists with Go's fmt: %q for CMD and ENTRYPOINT
# (`CMD ["a" "b c"]`), %v for SHELL and VOLUME (`SHELL [/bin/sh -c]`).


def _quoted(words: list[str]) -> str:
    return "[" + " ".join(go_quote(word) for word in words) + "]"


def _listed(words: list[str]) -> str:
    return "[" + " ".join(words) + "]"


def _command_argv(command: ins.Command, state: ImageState) -> list[str]:
    return [*state.shell, *command.args] if command.shell_form else list(command.args)


def _cmd(instruction: ins.Cmd, state: ImageState, scope: Scope) -> ImageState:
    argv = _command_argv(instruction.command, state)
    return replace(state.with_config(f"CMD {_quoted(argv)}", Cmd=argv), cmd_set=True)


def _entrypoint(instruction: ins.Entrypoint, state: ImageState, scope: Scope) -> ImageState:
    argv = _command_argv(instruction.command, state) if instruction.command.args else None
    text = f"ENTRYPOINT {_quoted(argv or [])}"
    if state.cmd_set:  # a CMD earlier in this stage stays (Docker, BuildKit)
        return state.with_config(text, Entrypoint=argv)
    return state.with_config(text, Entrypoint=argv, Cmd=None)  # the base's Cmd is reset


def _shell(instruction: ins.Shell, state: ImageState, scope: Scope) -> ImageState:
    argv = list(instruction.argv)
    return state.with_config(f"SHELL {_listed(argv)}", Shell=argv)


def _stopsignal(instruction: ins.Stopsignal, state: ImageState, scope: Scope) -> ImageState:
    signal = scope.expand(instruction.signal)
    return state.with_config(f"STOPSIGNAL {signal}", StopSignal=signal)


def _healthcheck(instruction: ins.Healthcheck, state: ImageState, scope: Scope) -> ImageState:
    check = healthcheck_json(instruction.test, instruction.interval, instruction.timeout,
                             instruction.start_period, instruction.start_interval,
                             instruction.retries)
    return state.with_config(f"HEALTHCHECK {' '.join(instruction.test)}", Healthcheck=check)


def _onbuild(instruction: ins.Onbuild, state: ImageState, scope: Scope) -> ImageState:
    triggers = [*(state.config.get("OnBuild") or []), instruction.expression]
    return state.with_config(f"ONBUILD {instruction.expression}", OnBuild=triggers)


def _maintainer(instruction: ins.Maintainer, state: ImageState, scope: Scope) -> ImageState:
    # MAINTAINER sets the image's author (a top-level field of the config document).
    return replace(state.with_config(f"MAINTAINER {instruction.name}"), author=instruction.name)


# Each takes the instruction of its type: the table's `Any` is that dispatch on the type.
_CONFIG_HANDLERS: dict[type, Callable[[Any, ImageState, Scope], ImageState]] = {
    ins.Env: _env, ins.Label: _label, ins.Workdir: _workdir, ins.User: _user,
    ins.Expose: _expose, ins.Volume: _volume, ins.Cmd: _cmd, ins.Entrypoint: _entrypoint,
    ins.Shell: _shell, ins.Stopsignal: _stopsignal, ins.Healthcheck: _healthcheck,
    ins.Onbuild: _onbuild, ins.Maintainer: _maintainer,
}

