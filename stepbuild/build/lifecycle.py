"""The life of a cached step (RUN, COPY or ADD), written once.

    prepare ─► look up ─┬─ hit:  reuse the recorded layer
                        └─ miss: perform ─► capture ─► commit ─► record

- prepare: the executor expands the instruction into a `PreparedStep`, its work and its key;
  the key covers the parent state and everything the step sees (`keys.py`).
- look up: the store's cache record for the key; on a local miss, the team cache's
  (--cache-from). A team cache hit outside the target stage is lazy: its layer is fetched
  only once something reads it (`BuildRun.need_layers`, called here before a step runs on or
  reads a state); when that fetch fails, `LazyLayerError` reaches `Builder.build`, which
  starts the build again with that key a miss.
- perform: in a workspace (a temporary dir, removed whatever happens), the executor runs the
  RUN in the sandbox or copies the files, over an overlay of the parent's layers.
- capture: the overlay's upper dir becomes a layer tar (None: the step changed nothing).
- commit: the layer goes into the store (its blob, then its dir); the cache record follows,
  never before. A step that fails commits nothing, and its error (`StepFailed`: location,
  exit status, last lines of output) passes through unchanged.

Early cutoff needs nothing here: a key covers the parent *state* (its layers and config), not
the parent's key, so a step that misses but makes the same layer as before leaves the same
state behind, and the steps after it hit again.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stepbuild.build.state import timestamp
from stepbuild.errors import BuildError, ContextChanged
from stepbuild.store.records import CacheRecord

if TYPE_CHECKING:
    from collections.abc import Callable

    from stepbuild.build.explainer import Explainer, Miss
    from stepbuild.build.plan import Scope
    from stepbuild.build.seams import BuildRun, BuildStore, StepExecutor, TeamCacheView
    from stepbuild.build.state import ImageState
    from stepbuild.build.step import PreparedStep
    from stepbuild.frontend import instructions as ins
    from stepbuild.progress import Progress


# How many times a step is prepared again when a context file changes under it (an editor
# saving, a `git checkout`), before the build gives up.
CONTEXT_ATTEMPTS = 4


@dataclass(frozen=True, slots=True)
class StepResult:
    """What a cached step produced: its layer (None: no change), the time of its history
    entry, and the time its cache record gives (when it was first built)."""

    diff_id: str | None
    created: str
    recorded: str


@dataclass(frozen=True, slots=True)
class StepLifecycle:
    """Builds the cached steps of one build attempt. It keeps no state of its own, so the
    stage threads share it. `no_cache`: every step is a miss; `no_cache_stages`: every step
    of these stages (indices; --no-cache-filter) is; `source_date_epoch`: the time of every
    step's history entry."""

    store: BuildStore
    executor: StepExecutor
    progress: Progress
    clock: Callable[[], float]
    team: TeamCacheView | None
    no_cache: bool = False
    source_date_epoch: int | None = None
    no_cache_stages: frozenset[int] = frozenset()
    explainer: Explainer | None = None  # why each miss ran (build/explainer.py)

    def step(self, build: BuildRun, instruction: ins.Run | ins.Copy | ins.Add | ins.Workdir,
             state: ImageState, scope: Scope, *, stage: int, label: str,
             eager: bool) -> tuple[ImageState, bool, str]:
        """The state after `instruction`, whether a cache had its result, and the step's
        key (the record a rebuild reads). `stage` is
        the index of the step's stage; `eager`: a team cache hit's layer is fetched now
        (the target stage's layers are all needed).

        A context file that changes between being hashed for the key and being copied
        (ContextChanged; nothing was committed) makes the step start again from prepare,
        with a new key, up to CONTEXT_ATTEMPTS times; then the build fails, located."""
        for attempt in range(1, CONTEXT_ATTEMPTS + 1):
            try:
                return self._step(build, instruction, state, scope, stage=stage, label=label,
                                  eager=eager)
            except ContextChanged as exc:
                if attempt == CONTEXT_ATTEMPTS:
                    where = f"{build.stages.filename}:{instruction.loc.line}:" \
                            f"{instruction.loc.column}"
                    raise BuildError(f"{where}: {exc.message}", hint=exc.hint) from None
                self.progress.warn(f"{exc.message}; reading it again")
        raise AssertionError("unreachable")  # the loop returns or raises

    def _step(self, build: BuildRun, instruction: ins.Run | ins.Copy | ins.Add | ins.Workdir,
              state: ImageState, scope: Scope, *, stage: int, label: str,
              eager: bool) -> tuple[ImageState, bool, str]:
        step = self.executor.prepare(instruction, state, scope, build)
        uncached = self.no_cache or stage in self.no_cache_stages
        record = None if uncached else self._look_up(step.key, state, eager)
        if record is not None:
            self.progress.cached(label)
            result = self._reuse(record)
            if self.explainer is not None:  # a hit computes no explanation
                self.explainer.hit(stage, label, instruction, step.key)
        else:
            miss = None if self.explainer is None else self.explainer.miss(
                stage, label, step, state, scope, uncached=uncached)
            result = self._run(build, step, state, label, uncached, miss)
        if self.team is not None:
            self.team.note(step.key, stage, result.diff_id, result.recorded, step.created_by)
        hit = record is not None
        return state.with_layer(result.diff_id, step.created_by, result.created), hit, step.key

    def _look_up(self, key: str, state: ImageState, eager: bool) -> CacheRecord | None:
        record = self.store.cache_records.get(key)
        if record is None and self.team is not None:
            # a hit; its layer imported now in the target stage, elsewhere once needed
            record = self.team.lookup(key, state.diff_ids, eager)
        return record

    def _reuse(self, record: CacheRecord) -> StepResult:
        epoch = self.source_date_epoch
        created = timestamp(epoch) if epoch is not None else record.created
        return StepResult(record.diff_id, created, record.created)

    def _run(self, build: BuildRun, step: PreparedStep, state: ImageState,
             label: str, uncached: bool, miss: Miss | None = None) -> StepResult:
        """perform → capture → commit → record, for a step no cache has (or, `uncached`,
        that --no-cache or --no-cache-filter runs again)."""
        started = self.clock()
        epoch = self.source_date_epoch
        created = timestamp(epoch if epoch is not None else started)
        if not step.link:  # --link: made on an empty root
            build.need_layers(state)
        for other in step.reads:
            build.need_layers(other)
        diff_id = None
        try:
            with self.executor.workspace(step, state) as space:
                self.executor.perform(step, state, space, build, label)
                layer = self.executor.capture(space)
                if layer is not None:
                    self.store.commit_layer(space.upper, layer.diff_id, layer.path)
                    diff_id = layer.diff_id
            finished = self.clock()
            # started/finished are for people and tests (did two stages overlap?), not keys.
            ours = CacheRecord((diff_id,) if diff_id else (), created, step.created_by,
                               inputs=step.inputs, started=started, finished=finished)
            # The first record of a key wins (`StepRecords.add`), so a fully cached rebuild of
            # an earlier image gives the digest it gave. A build that raced another over this
            # step takes the record in force, as a rebuild would; a --no-cache build (or a
            # --no-cache-filter stage) keeps its own result for its own image, without
            # replacing the record.
            recorded = self.store.cache_records.add(step.key, ours)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise _out_of_space(build, step.instruction) from exc
        if miss is not None and self.explainer is not None:
            self.explainer.ran(step.key, miss)  # its material, kept with its record
        self.progress.done(label, finished - started, reason=miss.reason if miss else "")
        if recorded is ours or uncached:
            return StepResult(diff_id, created, created)
        return self._reuse(recorded)


def _out_of_space(build: BuildRun, instruction: ins.Run | ins.Copy | ins.Add | ins.Workdir
                  ) -> BuildError:
    """The store's filesystem filled up while a step wrote its files or its layer. The
    workspace is gone and no blob, layer dir or record of the step was written (each is
    renamed into place whole, or its temp file removed)."""
    loc = instruction.loc
    return BuildError(f"{build.stages.filename}:{loc.line}:{loc.column}: no space left on"
                      " the store's filesystem while building this step (nothing of it was"
                      " kept)", hint="free some space there, or remove what no image uses"
                      " with `stepbuild prune`")
