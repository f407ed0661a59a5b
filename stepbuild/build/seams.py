"""What the builder needs of its collaborators, as small Protocols.

`Builder` (builder.py) and the step lifecycle (lifecycle.py) are written against these, not
against `store.Store`, `execute.Executor` or `teamcache.TeamCache`, which implement them; a
unit test drives the builder with in-memory fakes of them (tests/unit/build/test_builder.py).
Every name here is for typing only: importing this module costs nothing at run time.

The builder also hands its store, unchanged, to what a FROM of an archive or a registry
image (`archive.load`, `distribution.pull`) and the team cache need: those take the whole
`store.Store` (`builder.whole_store`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from stepbuild.build.mounts.cache import CacheMountObserver

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Mapping, Sequence
    from contextlib import AbstractContextManager
    from pathlib import Path

    from stepbuild.build.builder import BuildOptions
    from stepbuild.build.plan import Scope, Stages
    from stepbuild.build.state import ImageState
    from stepbuild.build.step import PreparedStep, Workspace
    from stepbuild.frontend import instructions as ins
    from stepbuild.layers.capture import LayerBlob
    from stepbuild.oci.documents import Descriptor, ImageConfig, Index, Manifest
    from stepbuild.sources.context import BuildContext
    from stepbuild.store.records import CacheRecord


class ImageStore(Protocol):
    """The store's images as `images.py` reads and writes them."""

    def resolve(self, name: str) -> Descriptor | None: ...

    def manifest(self, desc: Descriptor) -> Manifest: ...

    def index(self, desc: Descriptor) -> Index: ...

    def config(self, manifest: Manifest) -> ImageConfig: ...

    def put_blob(self, data: bytes) -> tuple[str, int]: ...

    def descriptor(self, digest: str, media_type: str) -> Descriptor: ...

    def put_image(self, config: ImageConfig, layers: Sequence[Descriptor],
                  annotations: dict[str, str] | None = None) -> Descriptor: ...

    def put_index(self, manifests: Sequence[Descriptor],
                  annotations: dict[str, str] | None = None) -> Descriptor: ...


class StepRecords(Protocol):
    """The store's step cache records (`store.records.CacheRecords`): `put` refuses a record
    naming a layer that is not committed; `add` too, and keeps a usable record already there
    (the first record of a key wins), returning the one in force; `get` is None for a missing
    or unusable record."""

    def get(self, key: str) -> CacheRecord | None: ...

    def put(self, key: str, record: CacheRecord) -> None: ...

    def add(self, key: str, record: CacheRecord) -> CacheRecord: ...


class BuildStore(ImageStore, Protocol):
    """What the builder needs of the store: images, tags, cache records, committed layers.

    The contracts are `store.Store`'s: `commit_layer` ingests the tar as the blob `diff_id`
    and moves `upper` in as the layer's dir.
    """

    @property
    def cache_records(self) -> StepRecords: ...

    def commit_layer(self, upper: Path, diff_id: str, tar_path: Path) -> Path: ...

    def tag(self, name: str, manifest: Descriptor) -> None: ...


class BuildRun(Protocol):
    """What preparing and performing a step may see of the build in progress: the stages,
    the states of those built so far, and `need_layers`, called before anything reads a
    state's files (a team cache hit may have left its layer to fetch when needed)."""

    @property
    def stages(self) -> Stages: ...

    @property
    def results(self) -> Mapping[int, ImageState]: ...

    def need_layers(self, state: ImageState) -> None: ...

    @property
    def team(self) -> CacheMountObserver | None:
        """The build's team cache, told of the cache mounts its RUN steps use."""

    @property
    def cancel(self) -> threading.Event:
        """Set when the build has failed: steps still running stop (`errors.Cancelled`)."""

    def read_outside(self, reason: str) -> None:
        """A step read something from outside the build context (a URL, a git repository):
        its result may differ next time although no local input changed."""

    def named_source(self, name: str, instruction: ins.Instruction
                     ) -> ImageState | BuildContext | None:
        """What NAME means when a --build-context names it (`build/named.py`): an image's
        state, or a directory to select in; None when no named context is called NAME."""


class StepExecutor(Protocol):
    """Prepares and performs RUN/COPY/ADD steps; the step lifecycle calls, in order:

        step = executor.prepare(instruction, state, scope, build)  # its key, its work
        # ... on a cache miss only:
        with executor.workspace(step, state) as space:  # removed on exit, whatever happens
            executor.perform(step, state, space, build, label)  # the step changes space.upper
            layer = executor.capture(space)  # space.upper as a layer tar; None: no change

    `prepare` raises PlanError/BuildError for a step that cannot be prepared (a bad flag, a
    missing source); `perform` raises `StepFailed` when a RUN's command fails, located at the
    step, with its exit status and last lines of output. Neither writes to the store's
    layers or cache records. `allow` holds the build's entitlements (`network.host`), which
    the builder checks against the Stepfile before any step runs.
    """

    allow: frozenset[str]

    def prepare(self, instruction: ins.Run | ins.Copy | ins.Add | ins.Workdir,
                state: ImageState, scope: Scope, build: BuildRun) -> PreparedStep: ...

    def workspace(self, step: PreparedStep, state: ImageState
                  ) -> AbstractContextManager[Workspace]: ...

    def perform(self, step: PreparedStep, state: ImageState, space: Workspace,
                build: BuildRun, label: str) -> None: ...

    def capture(self, space: Workspace) -> LayerBlob | None: ...


class TeamCacheView(CacheMountObserver, Protocol):
    """What the builder needs of the team cache (--cache-from, --cache-to), and what the
    build's RUN steps tell it of their cache mounts (`CacheMountObserver`).

    `lookup` is asked on a local miss; it returns a local cache record, and a hit's layer is
    imported at once when `eager`, otherwise only when `materialize` is called for it, which
    raises `LazyLayerError` (that key is then a miss) when it cannot be fetched. `note` is
    told every step that ran or hit; `export` writes the noted steps after the build; `close`
    ends it.
    """

    @property
    def exporting(self) -> bool: ...

    def lookup(self, key: str, parents: Sequence[str], eager: bool
               ) -> CacheRecord | None: ...

    def materialize(self, diff_ids: Sequence[str]) -> None: ...

    def note(self, key: str, stage: int, diff_id: str | None, created: str,
             created_by: str) -> None: ...

    def export(self, final_stages: set[int]) -> int: ...

    def close(self) -> None: ...


class OpenTeamCache(Protocol):
    """Opens the team cache of one build attempt; `misses` are keys to treat as misses (a
    lazy fetch of theirs failed in an earlier attempt)."""

    def __call__(self, store: BuildStore, options: BuildOptions, warn: Callable[[str], None],
                 misses: set[str]) -> TeamCacheView: ...


if TYPE_CHECKING:
    from stepbuild.build.execute import Executor
    from stepbuild.store.store import Store

    def _implemented(store: Store, executor: Executor) -> tuple[BuildStore, StepExecutor]:
        """mypy checks here that the real classes fit the seams (as cli passes them)."""
        return store, executor
