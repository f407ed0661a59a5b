"""From a parsed Stepfile to stages, and the variables each instruction sees.

This module owns Docker's scoping rules, as pure functions over values:
- instructions before the first FROM may only be ARGs (the global "meta" ARGs, usable in FROM);
- every FROM starts a stage, optionally named; `FROM <stage>` refers to an earlier one;
- inside a stage an ARG declares a variable: its value is the `--build-arg`, else the global
  value when redeclared without a default, else its own default (expanded), else unset;
- ENV values override ARGs of the same name, in expansion and in a RUN's environment;
- platform ARGs (TARGET* of the platform being built, BUILD* of this machine) are predefined
  in the global scope, so a stage sees them once it declares them (`ARG TARGETARCH`), as in
  BuildKit; proxy ARGs need no declaration;
- a stage's platform is its FROM --platform, else the target platform (`stage_platforms`).
No I/O and no building here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from stepbuild.build.keys import PROXY_ARGS
from stepbuild.errors import ExpansionError, PlanError, SourcePosition
from stepbuild.frontend import instructions as ins
from stepbuild.frontend.words import Lexer
from stepbuild.oci.platform import Platform, parse_platform


@dataclass(frozen=True, slots=True)
class Stage:
    """One FROM and the instructions up to the next FROM."""

    index: int
    name: str | None
    base: ins.From
    instructions: tuple[ins.Instruction, ...]


@dataclass(frozen=True, slots=True)
class Stages:
    filename: str
    meta_args: tuple[ins.Arg, ...]
    stages: tuple[Stage, ...]

    def find(self, name: str) -> Stage | None:
        """The stage called `name` (case-insensitive) or with that index."""
        lowered = name.lower()
        for stage in self.stages:
            if stage.name == lowered or str(stage.index) == name:
                return stage
        return None


def split_stages(stepfile: ins.Stepfile) -> Stages:
    """Group instructions into stages. Raises PlanError for an instruction before FROM."""
    meta: list[ins.Arg] = []
    stages: list[Stage] = []
    current: list[ins.Instruction] = []
    for instruction in stepfile.instructions:
        if isinstance(instruction, ins.From):
            if stages:
                stages[-1] = replace(stages[-1], instructions=tuple(current))
            stages.append(Stage(len(stages), instruction.stage_name, instruction, ()))
            current = []
        elif stages:
            current.append(instruction)
        elif isinstance(instruction, ins.Arg):
            meta.append(instruction)
        else:
            raise located(PlanError, stepfile.filename, instruction,
                          "no FROM before this instruction: only ARG may come before FROM")
    if not stages:
        raise PlanError("the Stepfile has no FROM instruction",
                        hint="start the build with FROM image, or FROM scratch")
    stages[-1] = replace(stages[-1], instructions=tuple(current))
    _check_stage_names(stepfile.filename, stages)
    return Stages(stepfile.filename, tuple(meta), tuple(stages))


def _check_stage_names(filename: str, stages: list[Stage]) -> None:
    seen: set[str] = set()
    for stage in stages:
        if stage.name is None:
            continue
        if stage.name in seen:
            raise located(PlanError, filename, stage.base,
                          f"duplicate stage name {stage.name!r}")
        seen.add(stage.name)


def located(kind: type[PlanError], filename: str, instruction: ins.Instruction,
            message: str, hint: str | None = None) -> PlanError:
    """An error of `kind` pointing at `instruction`."""
    loc = instruction.loc
    first_line = instruction.text.split("\n", 1)[0]
    return kind(message, SourcePosition(filename, loc.line, loc.column, first_line), hint=hint)


def platform_args(target: Platform, build: Platform) -> dict[str, str]:
    """The predefined platform ARGs (BuildKit's): TARGET* of the platform being built,
    BUILD* of this machine's."""
    return target.build_args("TARGET") | build.build_args("BUILD")


def stage_platforms(stages: Stages, needed: Iterable[int], globals_: Mapping[str, str],
                    escape: str, target: Platform) -> dict[int, Platform]:
    """The platform of each needed stage: its `FROM --platform` (expanded with the global
    ARGs, so `$BUILDPLATFORM` and `$TARGETPLATFORM` work), else the target platform. Checked
    before any step runs: a value that is no platform is a PlanError at its FROM. (A stage
    FROM an earlier stage takes that stage's platform when it is built, as BuildKit's does.)"""
    scope = Scope(escape, globals_)
    found: dict[int, Platform] = {}
    for index in needed:
        base = stages.stages[index].base
        found[index] = target
        if not base.platform:
            continue
        wanted = expand_at(scope, stages.filename, base, base.platform)
        parsed = parse_platform(wanted) if wanted.strip() else target
        if parsed is None:
            raise located(PlanError, stages.filename, base,
                          f"--platform={wanted}: not a platform",
                          hint="os/arch[/variant], e.g. linux/amd64 or $BUILDPLATFORM")
        found[index] = parsed
    return found


def check_entitlements(stages: Stages, needed: Iterable[int], allow: frozenset[str]) -> None:
    """Refuse (PlanError at the RUN) a `RUN --network=host` in a needed stage when the build
    lacks the network.host entitlement, before any step runs, as BuildKit checks a build's
    entitlements when it starts: a refusal after ten minutes of earlier steps helps nobody.
    (A RUN from an ONBUILD trigger is checked when it is prepared: `run.step_network`.)"""
    if "network.host" in allow:
        return
    for index in needed:
        for instruction in stages.stages[index].instructions:
            if isinstance(instruction, ins.Run) and instruction.network == "host":
                raise located(PlanError, stages.filename, instruction,
                              "RUN --network=host needs the network.host entitlement",
                              hint="pass --allow network.host to stepbuild build to let it")


@dataclass(frozen=True, slots=True)
class Scope:
    """The variables an instruction sees: the stage's declared ARGs plus the image's ENV.

    `args` are the ARGs declared so far in this stage (name → value; a declared ARG without
    any value is absent); `env` is the image config's Env list ("K=V"), kept in step with the
    image by the builder. Immutable: the `with_*` methods return a new scope.
    """

    escape: str = "\\"
    args: Mapping[str, str] = field(default_factory=dict)
    env: tuple[str, ...] = ()

    def variables(self) -> dict[str, str]:
        """What `$NAME` expands to: ARGs, overridden by ENV of the same name."""
        merged = dict(self.args)
        for item in self.env:
            name, _, value = item.partition("=")
            merged[name] = value
        return merged

    def run_env(self, build_args: Mapping[str, str]) -> tuple[str, ...]:
        """The environment of a RUN: ENV, then ARGs (and given proxy ARGs) ENV does not set."""
        names = {item.partition("=")[0] for item in self.env}
        extra = dict(self.args)
        extra.update({k: v for k, v in build_args.items() if k in PROXY_ARGS})
        return self.env + tuple(f"{k}={v}" for k, v in sorted(extra.items()) if k not in names)

    def expand(self, word: str) -> str:
        return Lexer(self.escape).process_word(word, self.variables())

    def expand_words(self, text: str) -> list[str]:
        return Lexer(self.escape).process_words(text, self.variables())

    def with_env(self, env: tuple[str, ...]) -> Scope:
        return replace(self, env=env)

    def with_arg(self, name: str, value: str | None) -> Scope:
        args = dict(self.args)
        if value is None:
            args.pop(name, None)
        else:
            args[name] = value
        return replace(self, args=args)


def declare_arg(scope: Scope, declaration: ins.ArgDeclaration, build_args: Mapping[str, str],
                globals_: Mapping[str, str]) -> Scope:
    """Apply one ARG declaration in a stage (or, with empty globals, in the global scope).
    Its name is expanded too, as BuildKit does (`ENV src=f` then `ARG ${src}=x` declares f)."""
    name = scope.expand(declaration.name)
    if name in build_args:
        value: str | None = build_args[name]
    elif declaration.default is not None:
        value = scope.expand(declaration.default)
    else:
        value = globals_.get(name)
    return scope.with_arg(name, value)


def global_args(stages: Stages, build_args: Mapping[str, str], escape: str,
                target: Platform, build: Platform) -> dict[str, str]:
    """The values of the ARGs before the first FROM, plus the predefined platform ARGs (of
    building `target` on `build`); a global `ARG TARGETARCH` without a default keeps the
    predefined value, as in BuildKit."""
    predefined = platform_args(target, build)
    scope = Scope(escape, predefined)
    for arg in stages.meta_args:
        for declaration in arg.declarations:
            scope = declare_arg(scope, declaration, build_args, predefined)
    return dict(scope.args)


def expand_at(scope: Scope, filename: str, instruction: ins.Instruction, word: str) -> str:
    """Expand `word` for `instruction`, turning an expansion error into a located one."""
    try:
        return scope.expand(word)
    except ExpansionError as exc:
        raise located(PlanError, filename, instruction, exc.message) from None


def stage_dependencies(stages: Stages, globals_: Mapping[str, str],
                       escape: str) -> dict[int, frozenset[int]]:
    """For each stage, the earlier stages it needs: its FROM, COPY --from, RUN --mount from.

    A reference to a stage that is not defined before the one using it (a forward reference,
    which is what a cycle needs) is a PlanError at that instruction. A name that is no stage
    is an image reference and adds no dependency.
    """
    scope = Scope(escape, globals_)
    graph: dict[int, frozenset[int]] = {}
    for stage in stages.stages:
        needs: set[int] = set()
        base = stages.find(expand_at(scope, stages.filename, stage.base, stage.base.image))
        if base is not None and base.index < stage.index:
            # FROM names an earlier stage; a later or its own name is an image (FROM node AS
            # node), as in Docker.
            needs.add(base.index)
        for instruction in stage.instructions:
            for ref, what in _stage_refs(instruction):
                name = expand_at(scope, stages.filename, instruction, ref)
                _add_stage_ref(stages, stage, instruction, name, needs, what)
        graph[stage.index] = frozenset(needs)
    return graph


def _stage_refs(instruction: ins.Instruction) -> list[tuple[str, str]]:
    if isinstance(instruction, ins.Copy) and instruction.from_:
        return [(instruction.from_, f"COPY --from={instruction.from_}")]
    if isinstance(instruction, ins.Run):
        return [(m.from_, f"RUN --mount from={m.from_}") for m in instruction.mounts
                if m.from_]
    if isinstance(instruction, ins.Onbuild):
        return _stage_refs(instruction.trigger)
    return []


def _add_stage_ref(stages: Stages, stage: Stage, instruction: ins.Instruction, name: str,
                   needs: set[int], what: str) -> None:
    target = stages.find(name)
    if name.isdigit() and target is None:
        raise located(PlanError, stages.filename, instruction,
                      f"{what}: there is no stage {name}")
    if target is None:
        return
    if target.index >= stage.index:
        raise located(PlanError, stages.filename, instruction,
                      f"{what}: stage {name!r} is used before it is defined"
                      " (a stage can only use the stages above it; cycles are impossible)")
    needs.add(target.index)


def needed_stages(target: int, graph: Mapping[int, frozenset[int]]) -> list[int]:
    """The stages `target` needs, itself included, in definition order."""
    seen: set[int] = set()
    pending = [target]
    while pending:
        index = pending.pop()
        if index not in seen:
            seen.add(index)
            pending.extend(graph[index])
    return sorted(seen)
