"""The builder loop: stages in order, each instruction taking the image to its next state.

`Builder.build` walks the stages of a Stepfile in order. Config-only instructions change the
image config (`state.py`); RUN, COPY, ADD and WORKDIR (which makes its directory,
`workdir.py`) are cached steps, built by `lifecycle.py`
(prepare → look up → perform → capture → commit): their key (`keys.py`) covers the parent
state and everything the step sees; a hit reuses the recorded layer, a miss runs the step in
an overlay (`execute.py`), captures the upper dir as a layer and commits it to the store
before recording the key. Nothing is committed for a step that fails.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from stepbuild.build.config import apply_config, arg_text, onbuild_triggers, with_labels
from stepbuild.build.explainer import make_explainer
from stepbuild.build.images import (
    LocalImage,
    import_archive,
    is_archive_name,
    local_image,
    save_state,
)
from stepbuild.build.lifecycle import StepLifecycle
from stepbuild.build.named import NamedSources
from stepbuild.build.plan import (
    Scope,
    Stage,
    Stages,
    check_entitlements,
    declare_arg,
    expand_at,
    global_args,
    located,
    needed_stages,
    split_stages,
    stage_dependencies,
    stage_platforms,
)
from stepbuild.build.state import ImageState, scratch, timestamp
from stepbuild.errors import (
    BaseImageError,
    BuildError,
    LazyLayerError,
    PlanError,
    StepbuildError,
)
from stepbuild.frontend import instructions as ins
from stepbuild.oci.platform import Platform
from stepbuild.sources.named import lookup

if TYPE_CHECKING:
    from stepbuild.build.seams import BuildStore, OpenTeamCache, StepExecutor, TeamCacheView
    from stepbuild.distribution.connection import Connection
    from stepbuild.oci.documents import Descriptor
    from stepbuild.progress import Progress
    from stepbuild.sources.context import BuildContext
    from stepbuild.sources.named import NamedContext
    from stepbuild.store.store import Store
    from stepbuild.teamcache.cache import CacheSpec


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """What the user asked for on the command line."""

    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    no_cache: bool = False
    # --no-cache-filter: stages (names or indices) whose steps run again; the others use the
    # cache as usual.
    no_cache_filter: tuple[str, ...] = ()
    network: str = "default"  # of RUN steps: default (private), none or host
    source_date_epoch: int | None = None
    target: str | None = None
    pull: str = "missing"  # FROM a registry reference: missing, always or never
    cache_from: tuple[CacheSpec, ...] = ()  # the team cache's import sources, in order
    cache_to: tuple[CacheSpec, ...] = ()  # the team cache's export destinations
    # For every registry the build reaches (FROM and the team cache); None: the defaults
    # (the default auth file, TLS verified against the system's CAs).
    connection: Connection | None = None
    # --label: the final image's config Labels, over the Stepfile's (no step key has them:
    # a new label changes the config and manifest only). --annotation manifest: annotations.
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    # --build-context, by canonical name (sources/named.py; resolved by build/named.py).
    contexts: Mapping[str, NamedContext] = field(default_factory=dict)
    # --platform: the platforms to build, in order (none: this machine's). Several give an
    # image index of one manifest per platform.
    platforms: tuple[Platform, ...] = ()


@dataclass(frozen=True, slots=True)
class BuildResult:
    """The image built, its steps (and how many were cached), and `outside`: why its result
    may differ next time although no local input changed — what it read from outside the
    context (an ADD of a URL or git repository, FROM an archive), or a team cache layer that
    could not be fetched. The no-op fingerprint never replays such a build."""

    manifest_digest: str
    state: ImageState
    steps: int
    cached: int
    outside: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()  # of its RUN/COPY/ADD steps: the records a rebuild reads
    # Platform (`linux/arm64`) → its image manifest's digest; with several platforms,
    # `manifest_digest` is the index's and `state` the last platform's.
    platforms: Mapping[str, str] = field(default_factory=dict)
    descriptor: Descriptor | None = None  # what manifest_digest names (its platform too)


def open_team_cache(store: BuildStore, options: BuildOptions, warn: Callable[[str], None],
                    misses: set[str]) -> TeamCacheView:
    """The team cache of --cache-from/--cache-to (`seams.OpenTeamCache`)."""
    from stepbuild.teamcache.cache import TeamCache

    return TeamCache(whole_store(store), options.cache_from, options.cache_to, warn,
                     connection=options.connection, misses=misses)


def whole_store(store: BuildStore) -> Store:
    """`store` as the `store.Store` it is, for what takes the whole store (the team cache, a
    FROM of an archive: `seams.py`); the builder's in-memory fakes never reach those."""
    from stepbuild.store.store import Store

    if not isinstance(store, Store):
        raise TypeError(f"{type(store).__name__} is not a store.Store")
    return store


class Builder:
    """Builds Stepfiles into images in one store.

    Collaborators are injected (`seams.py` says what each must do): `store` (store.Store),
    `executor` (execute.Executor: runs RUN and COPY/ADD steps for real), `progress`
    (progress.Progress), `clock`, and `team_cache`, which opens the team cache of a build
    that has --cache-from or --cache-to. No globals.
    Independent stages run at the same time, up to `jobs` of them, each in its own thread
    (the builder entered its private mount namespace before starting any).
    """

    def __init__(self, store: BuildStore, executor: StepExecutor, progress: Progress,
                 clock: Callable[[], float] = time.time, jobs: int = 1,
                 team_cache: OpenTeamCache = open_team_cache) -> None:
        self.store = store
        self.executor = executor
        self.progress = progress
        self.clock = clock
        self.jobs = max(1, jobs)
        self.team_cache = team_cache

    def build(self, stepfile: ins.Stepfile, options: BuildOptions) -> BuildResult:
        """Build for each of `options.platforms` (none: this machine's). One platform gives an
        image manifest, tagged, as ever; several give one manifest per platform (untagged)
        and an image index of them, tagged with the -t names.

        The platforms are built one after the other, each with up to `jobs` stages at once.
        Not in parallel: the cross-compilation pattern (`FROM --platform=$BUILDPLATFORM …
        AS build`) makes the same steps for every target, and built in turn the second
        target hits the first one's records; at once, both would miss and do the work
        twice (the builder has no in-flight sharing of a key between builds)."""
        platforms = options.platforms or (Platform.host(),)
        if len(platforms) == 1:
            return self._attempts(stepfile, options, platforms[0])
        built = [self._attempts(stepfile, replace(options, tags=()), p) for p in platforms]
        _check_distinct(platforms, built)
        descriptor = self.store.put_index([b.descriptor for b in built if b.descriptor])
        for tag in options.tags:
            self.store.tag(tag, descriptor)
        last = built[-1]
        return BuildResult(descriptor.digest, last.state, sum(b.steps for b in built),
                           sum(b.cached for b in built),
                           tuple(dict.fromkeys(o for b in built for o in b.outside)),
                           tuple(k for b in built for k in b.keys),
                           {k: v for b in built for k, v in b.platforms.items()}, descriptor)

    def _attempts(self, stepfile: ins.Stepfile, options: BuildOptions,
                  platform: Platform) -> BuildResult:
        """Build for `platform`; start again when a team cache hit's layer, fetched only once
        needed, turns out unusable: that key is a miss then (its step runs), the steps
        before stay hits."""
        misses: set[str] = set()
        outside: list[str] = []  # across attempts: what each read from outside the context
        while True:
            try:
                return self._build(stepfile, options, misses, outside, platform)
            except LazyLayerError as exc:
                misses.add(exc.key)
                outside.append("a team cache layer could not be fetched")  # output differs
                self.progress.warn(f"{exc.message}; treated as a miss, building again")

    def _build(self, stepfile: ins.Stepfile, options: BuildOptions, misses: set[str],
               outside: list[str], platform: Platform) -> BuildResult:
        stages = split_stages(stepfile)
        target = _target_stage(stages, options.target)
        globals_ = global_args(stages, options.build_args, stepfile.escape, platform,
                               Platform.host())
        graph = stage_dependencies(stages, globals_, stepfile.escape)
        for stage in stages.stages:  # a stage a named context replaces needs nothing
            if stage.name and lookup(options.contexts, stage.name) is not None:
                graph[stage.index] = frozenset()
        needed = needed_stages(target.index, graph)
        platforms = stage_platforms(stages, needed, globals_, stepfile.escape, platform)
        check_entitlements(stages, needed, self.executor.allow)
        uncached = no_cache_stages(stages, options.no_cache_filter)
        team = None
        if options.cache_from or options.cache_to:
            team = self.team_cache(self.store, options, self.progress.warn, misses)
        run = _Run(self, stages, options, globals_, stepfile.escape, len(needed) > 1, team,
                   outside, uncached)
        run.target = target.index
        run.platforms = platforms
        if len(options.platforms) > 1:  # progress says which platform a step is built for
            run.prefix = f"{platform} "
            if run.explainer is not None:  # compared with the same platform's last build
                run.explainer.per_platform(str(platform))
        try:
            self._run_stages(run, needed, graph)
            state = run.results[target.index]
            run.need_layers(state)
            state = with_labels(state, options.labels)
            descriptor = save_state(self.store, state, run.bases.get(target.index),
                                    options.annotations)
            for tag in options.tags:
                self.store.tag(tag, descriptor)
            if run.explainer is not None:  # what the next build and `stepbuild why` read
                run.explainer.finish(descriptor.digest)
            if run.team is not None and run.team.exporting:  # the final image's stages (min)
                run.team.export(_final_stages(run, target.index))
        finally:
            if run.team is not None:
                run.team.close()
        return BuildResult(descriptor.digest, state, run.steps, run.cached, tuple(outside),
                           tuple(run.keys), {str(state.platform): descriptor.digest},
                           descriptor)

    def _run_stages(self, run: _Run, needed: list[int],
                    graph: Mapping[int, frozenset[int]]) -> None:
        """Run each needed stage once its dependencies are done; the first error wins."""
        if self.jobs == 1 or len(needed) == 1:
            for index in needed:  # in definition order, which respects every dependency
                run.results[index] = run.stage(run.stages.stages[index])
            return
        from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

        pending = list(needed)
        running: dict[Future[ImageState], int] = {}
        with ThreadPoolExecutor(self.jobs, thread_name_prefix="stage") as pool:
            try:
                while pending or running:
                    for index in [i for i in pending if graph[i] <= run.results.keys()]:
                        pending.remove(index)
                        running[pool.submit(run.stage, run.stages.stages[index])] = index
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        index = running.pop(future)
                        if future.exception() is not None:
                            raise future.exception()  # type: ignore[misc]
                        run.results[index] = future.result()
            except BaseException:  # a stage failed, or SIGTERM (cli/main.py) came
                run.failed = True  # other stages stop at their next step...
                run.cancel.set()  # ...and the RUN steps running now are killed
                wait(running)
                raise


def _check_distinct(platforms: tuple[Platform, ...], built: list[BuildResult]) -> None:
    """An index holds one image per platform: refuse a target stage whose FROM --platform
    gives two targets the same platform (`--target` of a `$BUILDPLATFORM` stage, say)."""
    seen: dict[Platform, Platform] = {}
    for wanted, result in zip(platforms, built, strict=True):
        made = result.state.platform
        if made in seen:
            raise PlanError(f"--platform {seen[made]},{wanted}: the target stage is {made} "
                            "for both, and an image index holds one image per platform",
                            hint="build a stage of the target platform (no FROM --platform),"
                                 " or one platform")
        seen[made] = wanted


def _final_stages(run: _Run, target: int) -> set[int]:
    """The target and the stages it is built FROM, in a chain: what mode=min exports."""
    final: set[int] = set()
    index: int | None = target
    while index is not None and index not in final:
        final.add(index)
        index = run.from_stage.get(index)
    return final


def no_cache_stages(stages: Stages, names: tuple[str, ...]) -> frozenset[int]:
    """The indices of the stages --no-cache-filter names (by name or index). An unknown
    name is a PlanError listing the stages: a typo must not quietly leave the cache on."""
    found = set()
    for name in names:
        stage = stages.find(name)
        if stage is None:
            known = ", ".join(s.name for s in stages.stages if s.name) or "none"
            raise PlanError(f"--no-cache-filter: no stage named {name!r}",
                            hint=f"stages: {known} (or an index from 0)")
        found.add(stage.index)
    return frozenset(found)


def _target_stage(stages: Stages, target: str | None) -> Stage:
    if target is None:
        return stages.stages[-1]
    stage = stages.find(target)
    if stage is None:
        names = ", ".join(s.name for s in stages.stages if s.name) or "none"
        raise PlanError(f"target stage {target!r} could not be found", hint=f"stages: {names}")
    return stage


class _Run:
    """The state of one build: per-stage results and counters (shared by stage threads)."""

    def __init__(self, builder: Builder, stages: Stages, options: BuildOptions,
                 globals_: dict[str, str], escape: str, labelled: bool,
                 team: TeamCacheView | None, outside: list[str],
                 uncached: frozenset[int] = frozenset()) -> None:
        self.builder = builder
        self.stages = stages
        self.options = options
        self.globals = globals_
        self.escape = escape
        self.labelled = labelled
        self.results: dict[int, ImageState] = {}
        self.bases: dict[int, tuple[str, str]] = {}  # stage → its base image (name, digest)
        self.steps = 0
        self.cached = 0
        self.keys: list[str] = []  # of the cached steps (RUN, COPY, ADD), in the order run
        self.failed = False
        self.cancel = threading.Event()
        self.team = team  # with --cache-from/--cache-to
        self.outside = outside  # what the build read from outside the context (read_outside)
        self.explainer = make_explainer(
            builder.store, stages.filename, [s.name or "" for s in stages.stages], options.tags,
            options.target, self.bases, verbose=builder.progress.verbose,
            team_refs=tuple(spec.describe() for spec in options.cache_from),
            team_material=getattr(team, "material", None))
        self.lifecycle = StepLifecycle(builder.store, builder.executor, builder.progress,
                                       builder.clock, team, no_cache=options.no_cache,
                                       source_date_epoch=options.source_date_epoch,
                                       no_cache_stages=uncached, explainer=self.explainer)
        self.from_stage: dict[int, int] = {}  # stage → the earlier stage it is FROM
        self.target = -1  # the index of the stage built
        self.platforms: dict[int, Platform] = {}  # stage → its platform (plan.stage_platforms)
        self.prefix = ""  # before each stage label: the platform, when there are several
        self._lock = threading.Lock()
        self.named = NamedSources(options.contexts, builder.store, builder.progress,
                                  stages.filename, pull=options.pull,
                                  connection=options.connection, read_outside=self.read_outside)

    def read_outside(self, reason: str) -> None:
        """A step read something from outside the context (`BuildRun.read_outside`)."""
        with self._lock:
            self.outside.append(reason)

    def count(self, cached: bool = False) -> int:
        with self._lock:
            self.steps += 1
            self.cached += cached
            return self.steps

    def need_layers(self, state: ImageState) -> None:
        """Something is about to read `state`'s files: fetch the layers of team cache hits
        that were left for later (teamcache.materialize)."""
        if self.team is not None:
            self.team.materialize(state.diff_ids)

    # --- stages ------------------------------------------------------------------------------

    def label(self, stage: Stage) -> str:
        name = (stage.name or str(stage.index)) if self.labelled else ""
        return f"{self.prefix}{name}".strip()

    def stage(self, stage: Stage) -> ImageState:
        named = self.named.find(stage.name)  # --build-context NAME replaces stage NAME
        state, triggers = self.base(stage) if named is None else self.named_base(stage, named)
        instructions = stage.instructions if named is None else ()
        state = replace(state, cmd_set=False)  # a CMD of an earlier stage is its base's
        if self.options.source_date_epoch is not None:
            state = replace(state, created=timestamp(self.options.source_date_epoch))
        scope = Scope(self.escape, env=state.env)
        for instruction in (*triggers, *instructions):
            if self.failed:
                raise BuildError("stopped: another stage failed")
            self.builder.progress.step(self.label(stage), self.count(), instruction)
            with self.reporting_failure(stage):
                state, scope = self.apply(instruction, state, scope, stage)
            scope = scope.with_env(state.env)
        return state

    @contextmanager
    def reporting_failure(self, stage: Stage) -> Iterator[None]:
        """The step started last in `stage` failed: say so (`step.error`), then raise on."""
        try:
            yield
        except LazyLayerError:
            raise  # not a failure: the build starts again (Builder.build)
        except StepbuildError as exc:
            self.builder.progress.failed(self.label(stage), exc.render(),
                                         getattr(exc, "status", None))  # StepFailed's
            raise

    def base(self, stage: Stage) -> tuple[ImageState, tuple[ins.Instruction, ...]]:
        """The stage's starting state, and the ONBUILD triggers it must run first."""
        self.builder.progress.step(self.label(stage), self.count(), stage.base)
        with self.reporting_failure(stage):
            return self._base(stage)

    def _base(self, stage: Stage) -> tuple[ImageState, tuple[ins.Instruction, ...]]:
        name = expand_at(Scope(self.escape, self.globals), self.stages.filename, stage.base,
                         stage.base.image)
        platform = self.platforms.get(stage.index) or Platform.host()
        if name == "scratch":
            return scratch(platform), ()
        named = self.named.find(name)
        if named is not None:
            return self.named_base(stage, named, shown=False)
        earlier = self.stages.find(name)
        if earlier is not None and earlier.index < stage.index:
            self.from_stage[stage.index] = earlier.index
            if earlier.index in self.bases:
                self.bases[stage.index] = self.bases[earlier.index]
            # A stage's ONBUILD triggers fire in the stages built FROM it, as an image's do
            # (BuildKit's resolveStages); the child does not inherit them. It keeps the
            # earlier stage's platform too, as in BuildKit.
            return onbuild_triggers(self.results[earlier.index], self.stages.filename,
                                    stage.base)
        found = self.image_base(stage, name, platform)
        self.bases[stage.index] = (name, found.digest)
        assert found.state is not None  # image_base refused the others
        return onbuild_triggers(found.state, self.stages.filename, stage.base)

    def image_base(self, stage: Stage, name: str, platform: Platform) -> LocalImage:
        """FROM an image: from an archive, the store or a registry, of `platform` (an index's
        entry; a registry image is pulled for it). A local image of another platform, where
        none of this one can be pulled, is refused, as BuildKit refuses it."""
        store, imported = self.builder.store, None
        if is_archive_name(name):  # imported into the store on first use
            self.read_outside(f"FROM {name}")  # the archive is not part of the context
            imported = import_archive(whole_store(store), name, self.stages.filename,
                                      stage.base)
        found = local_image(store, imported or name, platform)
        usable = found is not None and found.state is not None
        other = found is not None and found.state is None  # of another platform
        wrong = f"base image {name!r} is {found.has}, not {platform}" if found else ""
        if imported is None and (not usable or self.options.pull == "always") and not (
                other and self.options.pull == "never"):
            try:
                pulled = self.from_registry(stage, name, found=usable, platform=platform)
            except StepbuildError as exc:
                if not other:
                    raise
                raise located(BaseImageError, self.stages.filename, stage.base, wrong,
                              hint=f"pulling one for {platform} failed: {exc.message}"
                              ) from None
            if pulled is not None:
                found = local_image(store, pulled, platform)
        if found is None:
            raise located(BaseImageError, self.stages.filename, stage.base,
                          f"base image {name!r} not found in the local store",
                          hint="build or load it first (stepbuild images lists them)")
        if found.state is None:
            raise located(BaseImageError, self.stages.filename, stage.base, wrong,
                          hint=f"build or pull it for {platform}, or name the platform it has"
                               " with FROM --platform")
        return found

    def named_base(self, stage: Stage, named: NamedContext, shown: bool = True
                   ) -> tuple[ImageState, tuple[ins.Instruction, ...]]:
        """FROM a named context: its image, or for a directory an image of its files alone
        (buildx: FROM a local context is its tree), made by a `COPY --from=NAME . /` on
        scratch, which the stage runs first. `shown`: its FROM line was printed already."""
        if shown:
            self.builder.progress.step(self.label(stage), self.count(), stage.base)
        if named.kind == "path":
            copy = ins.Copy(stage.base.loc, stage.base.text, (".",), "/", from_=named.name)
            return scratch(), (copy,)
        state, base = self.named.image(named, stage.base)
        self.bases[stage.index] = base
        return onbuild_triggers(state, self.stages.filename, stage.base)

    def named_source(self, name: str, instruction: ins.Instruction
                     ) -> ImageState | BuildContext | None:
        """What `COPY --from=NAME` or `RUN --mount from=NAME` reads when NAME is a named
        context (`BuildRun.named_source`): an image's state, or a directory; None if not."""
        named = self.named.find(name)
        if named is None:
            return None
        if named.kind == "path":
            return self.named.context(named)
        return self.named.image(named, instruction)[0]

    def from_registry(self, stage: Stage, name: str, found: bool,
                      platform: Platform) -> str | None:
        """FROM a registry reference: the local digest of the base for `platform`, pulled (or
        found under its normalised name) as --pull says; None to keep what the store
        resolved (or lacks)."""
        from stepbuild.distribution.display import TransferDisplay
        from stepbuild.distribution.pull import base_image

        progress = self.builder.progress
        try:
            return base_image(whole_store(self.builder.store), name, self.options.pull, found=found,
                              display=TransferDisplay(progress.emit,
                                                      verbose=progress.verbose),
                              connection=self.options.connection, platform=platform)
        except StepbuildError as exc:
            kind = PlanError if exc.exit_code == 2 else BaseImageError  # a bad reference: 2
            raise located(kind, self.stages.filename, stage.base, exc.message,
                          hint=exc.hint) from None

    # --- one instruction ---------------------------------------------------------------------

    def apply(self, instruction: ins.Instruction, state: ImageState, scope: Scope,
              stage: Stage) -> tuple[ImageState, Scope]:
        if isinstance(instruction, ins.Arg):
            for declaration in instruction.declarations:
                scope = declare_arg(scope, declaration, self.options.build_args, self.globals)
            return state.with_config(f"ARG {arg_text(instruction)}"), scope
        if isinstance(instruction, ins.Run | ins.Copy | ins.Add):
            return self.cached_step(instruction, state, scope, stage), scope
        if isinstance(instruction, ins.Workdir):
            return self.workdir(instruction, state, scope, stage), scope
        return self.config(instruction, state, scope), scope

    def config(self, instruction: ins.Instruction, state: ImageState,
               scope: Scope) -> ImageState:
        try:
            return apply_config(instruction, state, scope)
        except StepbuildError as exc:
            if isinstance(exc, PlanError) and exc.position is not None:
                raise
            raise located(PlanError, self.stages.filename, instruction, exc.message) from None

    def workdir(self, instruction: ins.Workdir, state: ImageState, scope: Scope,
                stage: Stage) -> ImageState:
        """WORKDIR sets WorkingDir and, as in BuildKit, makes the directory at once: a cached
        step (build/workdir.py). When the directory was there the step adds no layer, and
        WORKDIR keeps its config-only history entry."""
        moved = self.config(instruction, state, scope)
        if moved.workdir == "/":
            return moved
        made = self.cached_step(instruction, state, scope, stage)
        if made.diff_ids == state.diff_ids:
            return moved
        return replace(made, config=moved.config)

    def cached_step(self, instruction: ins.Run | ins.Copy | ins.Add | ins.Workdir,
                    state: ImageState, scope: Scope, stage: Stage) -> ImageState:
        state, hit, key = self.lifecycle.step(self, instruction, state, scope,
                                              stage=stage.index, label=self.label(stage),
                                              eager=stage.index == self.target)
        with self._lock:
            self.keys.append(key)
            self.cached += hit
        return state
