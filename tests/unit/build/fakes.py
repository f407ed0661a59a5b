"""In-memory fakes of the builder's seams (stepbuild/build/seams.py), for driving `Builder`
without root, mounts or a store on disk.

They share one `Disk`, a dict of path → bytes, as the real executor and store share the
filesystem: a step "changes" its workspace's upper dir by writing `<upper>/changes`,
`capture` turns that into a "layer tar" in the workspace, and `commit_layer` reads the tar,
checks its diff_id and keeps it as a blob, as the real store does. A layer's content is
therefore whatever the step wrote, and its diff_id the sha256 of that.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from stepbuild.build import keys
from stepbuild.build.builder import BuildOptions
from stepbuild.build.copy import CopyWork
from stepbuild.build.plan import Scope
from stepbuild.build.run import RunWork
from stepbuild.build.seams import BuildRun, BuildStore, TeamCacheView
from stepbuild.build.state import ImageState
from stepbuild.build.step import PreparedStep, Workspace
from stepbuild.build.workdir import WorkdirWork
from stepbuild.errors import BlobNotFound, LazyLayerError, SourcePosition, StepFailed
from stepbuild.frontend import instructions as ins
from stepbuild.layers.capture import LayerBlob
from stepbuild.oci import documents as oci
from stepbuild.store.records import CacheRecord

Disk = dict[Path, bytes]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def remove_tree(disk: Disk, top: Path) -> None:
    for path in [p for p in disk if p.is_relative_to(top)]:
        del disk[path]


# --- the store ----------------------------------------------------------------------------------


class FakeCacheRecords:
    """`seams.StepRecords` over the fake store's `cache` dict, with the real rules: a record
    may only name committed layers; one naming a layer that is gone is a miss."""

    def __init__(self, store: FakeStore) -> None:
        self.store = store

    def get(self, key: str) -> CacheRecord | None:
        record = self.store.cache.get(key)
        if record is None or not set(record.diff_ids) <= self.store.layers:
            return None
        return record

    def put(self, key: str, record: CacheRecord) -> None:
        for diff_id in record.diff_ids:
            if diff_id not in self.store.layers:
                raise BlobNotFound(diff_id, hint="commit the layer before its cache record")
        self.store.cache[key] = record

    def add(self, key: str, record: CacheRecord) -> CacheRecord:
        kept = self.get(key)
        if kept is not None:
            return kept
        self.put(key, record)
        return record


class FakeStore:
    """`seams.BuildStore` over dicts: blobs by digest, committed layers, cache records, tags.
    It keeps the real store's rules: a layer's tar must hash to its diff_id, a cache record
    may only name committed layers, and a record naming a layer that is gone is a miss."""

    def __init__(self, disk: Disk) -> None:
        self.disk = disk
        self.blobs: dict[str, bytes] = {}
        self.layers: set[str] = set()
        self.cache: dict[str, CacheRecord] = {}
        self.tags: dict[str, oci.Descriptor] = {}
        self.cache_records = FakeCacheRecords(self)

    # images
    def resolve(self, name: str) -> oci.Descriptor | None:
        if name in self.tags:
            return self.tags[name]
        return None

    def manifest(self, desc: oci.Descriptor) -> oci.Manifest:
        return oci.Manifest.from_bytes(self.blobs[desc.digest])

    def config(self, manifest: oci.Manifest) -> oci.ImageConfig:
        return oci.ImageConfig.from_bytes(self.blobs[manifest.config.digest])

    def put_blob(self, data: bytes) -> tuple[str, int]:
        self.blobs[sha256(data)] = data
        return sha256(data), len(data)

    def descriptor(self, digest: str, media_type: str) -> oci.Descriptor:
        if digest not in self.blobs:
            raise BlobNotFound(digest)
        return oci.Descriptor(media_type, digest, len(self.blobs[digest]))

    def put_image(self, config: oci.ImageConfig, layers: Sequence[oci.Descriptor],
                  annotations: dict[str, str] | None = None) -> oci.Descriptor:
        for layer in layers:
            assert len(self.blobs[layer.digest]) == layer.size
        config_digest, config_size = self.put_blob(config.to_bytes())
        manifest = oci.Manifest(oci.Descriptor(oci.MEDIA_TYPE_CONFIG, config_digest, config_size),
                                tuple(layers), annotations)
        digest, size = self.put_blob(manifest.to_bytes())
        return oci.Descriptor(oci.MEDIA_TYPE_MANIFEST, digest, size, platform=config.platform)

    def index(self, desc: oci.Descriptor) -> oci.Index:
        return oci.Index.from_bytes(self.blobs[desc.digest])

    def put_index(self, manifests: Sequence[oci.Descriptor],
                  annotations: dict[str, str] | None = None) -> oci.Descriptor:
        for entry in manifests:
            assert entry.digest in self.blobs and entry.platform, entry
        digest, size = self.put_blob(oci.Index(tuple(manifests), annotations).to_bytes())
        return oci.Descriptor(oci.MEDIA_TYPE_INDEX, digest, size)

    def tag(self, name: str, manifest: oci.Descriptor) -> None:
        self.tags[name] = manifest

    # cache records and layers

    def commit_layer(self, upper: Path, diff_id: str, tar_path: Path) -> Path:
        data = self.disk.pop(tar_path)
        assert sha256(data) == diff_id, "the tar is not the layer it claims to be"
        self.blobs[diff_id] = data
        self.layers.add(diff_id)
        remove_tree(self.disk, upper)  # moved into the store
        return Path("/store/layers") / diff_id

    # what tests read
    def resolve_digest(self, digest: str) -> oci.Descriptor:
        """The manifest descriptor of a manifest blob (what a digest resolves to)."""
        return oci.Descriptor(oci.MEDIA_TYPE_MANIFEST, digest, len(self.blobs[digest]))

    def image(self, name: str) -> tuple[oci.Manifest, oci.ImageConfig]:
        manifest = self.manifest(self.tags[name])
        return manifest, self.config(manifest)


# --- the executor -------------------------------------------------------------------------------


@dataclass
class Script:
    """What the fake steps do, by instruction text: what each writes (its layer's content;
    None: it changes nothing; by default its own text), what each sees beyond its text (a
    stand-in for context files: changing it changes the key), and which fail, with their
    exit status and last lines of output (after writing)."""

    writes: dict[str, bytes | None] = field(default_factory=dict)
    sees: dict[str, str] = field(default_factory=dict)
    fails: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)


class FakeExecutor:
    """`seams.StepExecutor` following a `Script`. `ran` lists the steps performed, in order;
    `workspaces` the workspace dirs made (each is removed from the disk on exit)."""

    def __init__(self, disk: Disk, script: Script) -> None:
        self.disk = disk
        self.script = script
        self.allow: frozenset[str] = frozenset()
        self.ran: list[str] = []
        self.workspaces: list[Path] = []
        self._numbers = itertools.count()  # stage threads take numbers at the same time

    def prepare(self, instruction: ins.Run | ins.Copy | ins.Add | ins.Workdir,
                state: ImageState, scope: Scope, build: BuildRun) -> PreparedStep:
        source = _copy_source(instruction, build)
        # As the real keys: the parent state (or, for --link, not), what the step sees.
        inputs = {"text": instruction.text, "sees": self.script.sees.get(instruction.text, ""),
                  "from": source.key if source else None}
        link = isinstance(instruction, ins.Copy) and instruction.link
        key = keys.step_key(f"link {state.platform}" if link else state.key, inputs)
        work: RunWork | CopyWork | WorkdirWork
        if isinstance(instruction, ins.Run):
            work = RunWork(tuple(instruction.command.args), scope.run_env({}), "host")
        elif isinstance(instruction, ins.Workdir):
            work = WorkdirWork(instruction.path, state.user, build.stages.filename)
        else:
            work = _copy_work(instruction, source, build.stages.filename)
        return PreparedStep(instruction, key, inputs, instruction.text, work,
                            (source,) if source else (), link=link)

    @contextmanager
    def workspace(self, step: PreparedStep, state: ImageState) -> Iterator[Workspace]:
        tmp = Path(f"/store/tmp/step-{next(self._numbers)}")
        self.workspaces.append(tmp)
        lowers = () if step.link else tuple(Path("/store/layers") / d
                                            for d in reversed(state.diff_ids))
        try:
            yield Workspace(tmp, lowers)
        finally:
            remove_tree(self.disk, tmp)

    def perform(self, step: PreparedStep, state: ImageState, space: Workspace,
                build: BuildRun, label: str) -> None:
        text = step.instruction.text
        self.ran.append(text)
        written = self.script.writes.get(text, text.encode())
        if written is not None:
            self.disk[space.upper / "changes"] = written
        if text in self.script.fails:
            status, tail = self.script.fails[text]
            loc = step.instruction.loc
            where = SourcePosition(build.stages.filename, loc.line, loc.column, text)
            raise StepFailed(where, step.created_by, status, tail)

    def capture(self, space: Workspace) -> LayerBlob | None:
        written = self.disk.get(space.upper / "changes")
        if written is None:
            return None
        tar = space.tmp / "layer.tar"
        self.disk[tar] = written
        return LayerBlob(sha256(written), len(written), tar)


def _copy_source(instruction: ins.Instruction, build: BuildRun) -> ImageState | None:
    if not isinstance(instruction, ins.Copy) or not instruction.from_:
        return None
    stage = build.stages.find(instruction.from_)
    assert stage is not None, "the fake knows COPY --from=<stage> only"
    return build.results[stage.index]


def _copy_work(copy: ins.Copy | ins.Add, source: ImageState | None, filename: str) -> CopyWork:
    return CopyWork(dest=copy.dest, selection=None, layout=None, source=source,
                    sources=copy.sources, excludes=(), parents=False, inline=(), downloads=(),
                    git=(), keep_git_dir=False, chown=None, owner=None, chmod=None,
                    unpack=False, where=f"{filename}:{copy.loc.line}")


# --- the team cache -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    """A step as a team cache holds it: its layer's content (None: no layer)."""

    content: bytes | None
    created: str
    created_by: str


@dataclass
class Remote:
    """A team cache's storage, shared by the builds that export to it and import from it.
    `unreadable`: diff_ids whose layers cannot be fetched (a blob gone from the registry)."""

    steps: dict[str, Exported] = field(default_factory=dict)
    unreadable: set[str] = field(default_factory=set)


class FakeTeamCache:
    """`seams.TeamCacheView` over a `Remote`, with the real one's rules: a hit is a local
    record at once; its layer is imported now when `eager`, else left for `materialize`,
    which raises `LazyLayerError` (and makes the key a miss) when the fetch fails."""

    def __init__(self, store: FakeStore, remote: Remote, misses: set[str],
                 exporting: bool) -> None:
        self.store = store
        self.remote = remote
        self.misses = set(misses)
        self._exporting = exporting
        self.lazy: dict[str, str] = {}  # diff_id → key, not fetched yet
        self.fetched: list[str] = []  # diff_ids, in order
        self.noted: dict[str, tuple[str | None, str, str]] = {}
        self.closed = False

    @property
    def exporting(self) -> bool:
        return self._exporting

    def lookup(self, key: str, parents: Sequence[str], eager: bool) -> CacheRecord | None:
        step = self.remote.steps.get(key)
        if step is None or key in self.misses:
            return None
        diff_id = sha256(step.content) if step.content is not None else None
        if diff_id is None or diff_id in self.store.layers:
            self._record(key, diff_id)
        elif eager:  # the real one warns and tries its next source
            if diff_id in self.remote.unreadable:
                return None
            self._fetch(key, diff_id)
        else:
            self.lazy[diff_id] = key
        return CacheRecord((diff_id,) if diff_id else (), step.created, step.created_by,
                           imported=True)

    def materialize(self, diff_ids: Sequence[str]) -> None:
        for diff_id in diff_ids:
            key = self.lazy.pop(diff_id, None)
            if key is None:
                continue
            if diff_id in self.remote.unreadable:
                self.misses.add(key)
                raise LazyLayerError(key, f"cache fake: key {key}: blob {diff_id} is gone")
            self._fetch(key, diff_id)

    def _fetch(self, key: str, diff_id: str) -> None:
        tar = Path(f"/store/tmp/cache-layer-{len(self.fetched)}")
        self.store.disk[tar] = self._content(key)
        self.store.commit_layer(Path("/store/tmp/cache-import"), diff_id, tar)
        self.fetched.append(diff_id)
        self._record(key, diff_id)

    def _content(self, key: str) -> bytes:
        content = self.remote.steps[key].content
        assert content is not None
        return content

    def _record(self, key: str, diff_id: str | None) -> None:
        step = self.remote.steps[key]
        self.store.cache_records.put(key, CacheRecord(
            (diff_id,) if diff_id else (), step.created, step.created_by, imported=True))

    def note(self, key: str, stage: int, diff_id: str | None, created: str,
             created_by: str) -> None:
        self.noted[key] = (diff_id, created, created_by)

    def export(self, final_stages: set[int]) -> int:  # mode=max: every noted step
        for key, (diff_id, created, created_by) in self.noted.items():
            content = self.store.blobs[diff_id] if diff_id else None
            self.remote.steps[key] = Exported(content, created, created_by)
        return len(self.noted)

    def close(self) -> None:
        self.closed = True


@dataclass
class TeamCaches:
    """Opens a `FakeTeamCache` per build attempt (`seams.OpenTeamCache`); `opened` keeps
    them, in order."""

    remote: Remote
    opened: list[FakeTeamCache] = field(default_factory=list)

    def __call__(self, store: BuildStore, options: BuildOptions, warn: Callable[[str], None],
                 misses: set[str]) -> TeamCacheView:
        assert isinstance(store, FakeStore)
        cache = FakeTeamCache(store, self.remote, misses, exporting=bool(options.cache_to))
        self.opened.append(cache)
        return cache

