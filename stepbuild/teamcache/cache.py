"""The team cache: `--cache-to` / `--cache-from`, step keys → layers shared between stores.

Keys (build/keys.py) are content-based and machine-independent, so a record made by one
builder is valid for another. Two backends:

- `type=local,dest=DIR` / `type=local,src=DIR`: an OCI layout on a (shared) filesystem
  (`local.py`).
- `type=registry,ref=HOST/REPO:TAG`: the layer blobs are pushed to REPO beside OCI artifact
  manifests (artifactType `application/vnd.stepbuild.cache.v1+json`) whose config blob is a
  key → record map: one tag per writing store, folded into TAG (`registry.py` says why
  and how). An import reads the maps once per build, then only the blobs of keys that hit.

The record formats are `records.py`'s. `mode=min` (default) exports the steps of the final
image's stages, `mode=max` every step of every stage that ran or hit.

Cache mounts (`RUN --mount=type=cache`), with `cache-mounts=true` on a --cache-to: every cache
mount a RUN step of the build used is exported as a deterministic tar of its directory
(layer.capture, no lowers), gzip-compressed, stored as a blob beside the layers, with a record
`{"schema", "id", "identity", "digest", "size"}` named by the hash of the cache's identity
(the name of its directory in the store): `cache-mounts/<hash>.json` in a local dir, the map
entry `cache-mounts/<hash>` in a registry artifact. Any --cache-from source with such a record
seeds a cache mount that does not exist in the store yet (a local one is never overwritten),
when a step first mounts it: the blob's digest is verified and it is unpacked with the safe
unpacker into the new instance's temp dir, which is then renamed into place. A record or blob
that cannot be used leaves the cache empty, with a warning.

Import on a local miss: each source in order; a hit copies the blob (its sha256 verified),
decompresses it (its sha256 must be the record's diff_id), applies it into a layer dir,
commits it and writes the local cache record — the step is CACHED. Anything unreadable or
wrong degrades to a miss with a warning; a wrong layer is never used.

Only the layers a build needs are fetched (as BuildKit's lazy blobs): outside the target stage
a hit only records what it would import, and `materialize(diff_ids)` fetches a layer when
something reads it — a step that runs on it, a `COPY --from` or `RUN --mount from=` that runs,
the target image, an export. A builder stage whose result reaches the target only through a
`COPY --from` that hits too is never downloaded. Because such a fetch comes after the step was
taken as CACHED, a failure raises `LazyLayerError`; the build then starts again with that key
a miss (build/builder.py), so a bad cache still never fails a build.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from stepbuild.errors import BuildError, LazyLayerError, StepbuildError, UsageError
from stepbuild.oci.digest import sha256_file
from stepbuild.store.explain import ExplainRecords
from stepbuild.store.layout import cache_mount_name
from stepbuild.store.records import CacheRecord
from stepbuild.teamcache.local import LocalDir
from stepbuild.teamcache.records import (
    MOUNT_SCHEMA,
    CacheError,
    make_record,
    stamp,
)

if TYPE_CHECKING:
    from stepbuild.distribution.connection import Connection
    from stepbuild.oci.documents import Descriptor
    from stepbuild.store.store import Store
    from stepbuild.teamcache.backend import CacheBackend

__all__ = ["CacheExportError", "CacheMount", "CacheSpec", "LazyLayerError", "TeamCache",
           "parse_cache_spec"]


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """One --cache-to / --cache-from value."""

    type: str  # "local" or "registry"
    location: str  # DIR or REF
    mode: str = "min"
    cache_mounts: bool = False  # export RUN --mount=type=cache contents too (cache-to)
    ignore_error: bool = False  # cache-to: a failed export warns instead of failing the build

    def describe(self) -> str:
        return f"type={self.type},{'ref' if self.type == 'registry' else 'dir'}={self.location}"


class CacheExportError(BuildError):
    """A --cache-to destination could not be written (without ignore-error=true). The image
    was built and tagged before the export began, and stays so."""

    def __init__(self, spec: CacheSpec, cause: str) -> None:
        where = "ref" if spec.type == "registry" else "dest"
        super().__init__(f"--cache-to type={spec.type},{where}={spec.location}: cannot export"
                         f" the cache: {cause}",
                         hint="the image was built all the same, and tagged with any -t"
                              " names; add ignore-error=true to --cache-to to let a failed"
                              " export pass")
        self.spec = spec
        self.cause = cause


_BOOLEAN_OPTIONS = ("cache-mounts", "ignore-error")


def parse_cache_spec(text: str, direction: str) -> CacheSpec:
    """`type=local,dest=DIR` (to) / `type=local,src=DIR` (from) /
    `type=registry,ref=REF[,mode=min|max]`, plus `cache-mounts=` and `ignore-error=`
    (true|false). A bare value without `=` is a registry reference, as buildx reads it
    (`--cache-from REG/app:cache`). `direction` is "to" or "from"."""
    flag = f"--cache-{direction}"
    if "=" not in text:
        return CacheSpec("registry", _registry_ref(text, flag, bare=True))
    fields = _fields(text, flag)
    kind = fields.pop("type", "local" if ("src" in fields or "dest" in fields) else "registry")
    mode = fields.pop("mode", "min")
    if mode not in ("min", "max"):
        raise UsageError(f"invalid {flag} mode {mode!r}", hint="mode=min|max")
    if kind == "local":
        name = "dest" if direction == "to" else "src"
        location = fields.pop(name, None)
        if not location:
            raise UsageError(f"{flag} type=local needs {name}=DIR")
    elif kind == "registry":
        location = _registry_ref(fields.pop("ref", ""), flag, bare=False)
    else:
        raise UsageError(f"unknown {flag} type {kind!r}", hint="type=local|registry")
    fields.pop("compression", None)
    flags = {name: _boolean(fields.pop(name, "false"), name, flag) for name in _BOOLEAN_OPTIONS}
    if fields:
        raise UsageError(f"{flag}: unknown option(s) {', '.join(sorted(fields))}")
    return CacheSpec(kind, location, mode, flags["cache-mounts"], flags["ignore-error"])


def _fields(text: str, flag: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for index, part in enumerate(text.split(",")):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            hint = f"a reference with options is type=registry,ref={part},..." if (
                index == 0 and part) else None
            raise UsageError(f"invalid {flag} {text!r}: {part!r} is not KEY=VALUE", hint=hint)
        fields[name.strip()] = value.strip()
    return fields


def _registry_ref(ref: str, flag: str, *, bare: bool) -> str:
    """`ref` if it is an image reference; a clear UsageError otherwise."""
    from stepbuild.distribution.reference import parse_reference
    from stepbuild.errors import InvalidReference

    if not ref:
        raise UsageError(f"{flag} type=registry needs ref=REGISTRY/REPO:TAG")
    try:
        parse_reference(ref)
    except InvalidReference as exc:
        # A bare value is read as buildx reads it: a registry reference, never a directory.
        if not bare:
            raise UsageError(f"invalid {flag} ref {ref!r}: {exc.problem}",
                             hint=exc.hint) from None
        raise UsageError(f"invalid {flag} {ref!r}: not a registry reference ({exc.problem})",
                         hint=f"a bare {flag} value is a registry reference; a directory is"
                              f" type=local,{'src' if flag.endswith('from') else 'dest'}=DIR"
                         ) from None
    return ref


def _boolean(value: str, name: str, flag: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise UsageError(f"invalid {flag} {name}={value!r}", hint=f"{name}=true|false")
    return value.lower() == "true"


# --- the build's view ---------------------------------------------------------------------------


class CacheMount(Protocol):
    """A cache mount a RUN of the build declared, as the team cache reads it: the build's
    `build.mounts.plan.PlannedMount` (named here, as teamcache/ is below build/)."""

    @property
    def cache_id(self) -> str: ...

    @property
    def identity(self) -> Mapping[str, Any]:
        """What makes the cache the same one in another build (JSON): it names its dir."""


@dataclass(frozen=True, slots=True)
class _Lazy:
    """A hit whose layer is not fetched yet: its source, and the layers it applies on."""

    key: str
    record: dict[str, Any]
    spec: CacheSpec
    backend: CacheBackend
    parents: tuple[str, ...]
    local: CacheRecord  # the local cache record, written once the layer is there


@dataclass(slots=True)
class _Used:
    key: str
    stage: int
    diff_id: str | None
    created: str
    created_by: str


class TeamCache:
    """The --cache-from sources and --cache-to destinations of one build.

    `lookup(key, parents, eager)` is called on a local miss; `materialize(diff_ids)` before
    anything reads those layers; `note(...)` for every step that ran or hit;
    `export(final_stages)` after the build. `warn` reports a source that cannot be read.
    `misses`: keys to treat as misses (a lazy fetch of theirs failed in an earlier attempt).
    """

    def __init__(self, store: Store, sources: Sequence[CacheSpec],
                 destinations: Sequence[CacheSpec], warn: Callable[[str], None],
                 connection: Connection | None = None, misses: Collection[str] = ()) -> None:
        self.store = store
        self.warn = warn
        self.misses = set(misses)
        self._lazy: dict[str, _Lazy] = {}  # diff_id → a hit whose layer is not fetched yet
        self._fetching = threading.Lock()  # one lazy fetch at a time (stage threads)
        if connection is None and any(s.type == "registry" for s in (*sources, *destinations)):
            from stepbuild.distribution.connection import Connection

            connection = Connection()
        self.sources = [(s, self._backend(s, connection)) for s in sources]
        self.destinations = [(s, self._backend(s, connection)) for s in destinations]
        self._used: dict[str, _Used] = {}
        self._explained = ExplainRecords(store)  # explanation material, with the records
        self._broken: set[int] = set()  # sources that failed as a whole (registry map)
        self._lock = threading.Lock()
        self._mounts: dict[str, tuple[str, dict[str, Any], Path]] = {}  # name → id, identity, dir

    def _backend(self, spec: CacheSpec, connection: Connection | None) -> CacheBackend:
        if spec.type == "local":
            return LocalDir(Path(spec.location))
        from stepbuild.teamcache.registry import RegistryCache

        assert connection is not None  # __init__ opens one when any spec is a registry
        return RegistryCache(spec.location, connection, self.store.root, self.warn)

    @property
    def exporting(self) -> bool:
        return bool(self.destinations)

    def close(self) -> None:
        """The build is over: close registry connections."""
        for _, backend in (*self.sources, *self.destinations):
            backend.close()

    # --- import ---------------------------------------------------------------------------

    def lookup(self, key: str, parents: Sequence[str], eager: bool) -> CacheRecord | None:
        """A local cache record for `key` (on the layers `parents`) from the first source that
        has a usable one, or None. `eager`: import its layer now (the target stage's layers
        are all needed); otherwise it is fetched by `materialize`, if ever."""
        if key in self.misses:
            return None
        for index, (spec, backend) in enumerate(self.sources):
            if index in self._broken:
                continue
            try:
                record = backend.record(key)
            except CacheError as exc:
                if getattr(backend, "entries", None) == {}:  # a registry map: unreadable
                    self._broken.add(index)
                self.warn(f"cache {spec.describe()}: {exc.message}; treated as a miss")
                continue
            if record is None:
                continue
            local = CacheRecord((record["diff_id"],) if record["diff_id"] else (),
                                record["created"], record["created_by"], imported=True)
            if isinstance(record.get("explain"), dict):  # travels on with a re-export
                self._explained.put_material(key, record["explain"])
            lazy = _Lazy(key, record, spec, backend, tuple(parents), local)
            diff_id = record["diff_id"]
            if diff_id is None or self.store.has_layer(diff_id):
                self.store.cache_records.put(key, local)
                return local
            if not eager:
                with self._fetching:
                    self._lazy.setdefault(diff_id, lazy)
                return local
            self.materialize(parents)  # the layers below, first (LazyLayerError)
            try:
                self._fetch(lazy, parents)
            except (CacheError, StepbuildError, OSError) as exc:
                message = getattr(exc, "message", None) or str(exc)
                self.warn(f"cache {spec.describe()}: key {key}: {message}; treated as a miss")
                continue
            return local
        return None

    def material(self, made: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The key and explanation material of the newest record in the --cache-from
        sources of the same step as the material `made` (same instruction text, same stage),
        or None. Only asked to explain a miss: it reads every record of a source."""
        best: tuple[str, str, dict[str, Any]] | None = None
        for index, (_, backend) in enumerate(self.sources):
            if index in self._broken:
                continue
            for key in _keys(backend):
                with suppress(CacheError):
                    record = backend.record(key)
                    found = record.get("explain") if record else None
                    if (record and isinstance(found, dict) and found.get("text") == made["text"]
                            and _same_stage(found, made) and (
                                best is None or record["created"] > best[0])):
                        best = (record["created"], key, found)
        return (best[1], best[2]) if best else None

    def materialize(self, diff_ids: Sequence[str]) -> None:
        """Fetch the layers among `diff_ids` (an image's, bottom first) that a hit left for
        later, in order: each is applied on the ones below it. `LazyLayerError` when one
        cannot be fetched (its key becomes a miss for the next attempt)."""
        with self._fetching:
            for index, diff_id in enumerate(diff_ids):
                lazy = self._lazy.get(diff_id)
                if lazy is None or self.store.has_layer(diff_id):
                    continue
                try:
                    self._fetch(lazy, diff_ids[:index])
                except (CacheError, StepbuildError, OSError) as exc:
                    self.misses.add(lazy.key)
                    message = getattr(exc, "message", None) or str(exc)
                    raise LazyLayerError(lazy.key, f"cache {lazy.spec.describe()}: key "
                                         f"{lazy.key}: {message}") from None
                del self._lazy[diff_id]

    def _fetch(self, lazy: _Lazy, parents: Sequence[str]) -> None:
        """Import `lazy`'s layer on `parents` (all present), then its local cache record."""
        if not self.store.has_layer(lazy.record["diff_id"]):
            lowers = [self.store.layer_dir(d) for d in reversed(parents)]
            self._import_layer(lazy.record, lazy.backend, lowers)
        self.store.cache_records.put(lazy.key, lazy.local)

    def _import_layer(self, record: dict[str, Any], backend: CacheBackend,
                      lowers: Sequence[Path]) -> None:
        from stepbuild.errors import DigestMismatch
        from stepbuild.layers.apply import commit_applied
        from stepbuild.layers.compress import compression_of
        from stepbuild.layers.decompress import decompress_to
        from stepbuild.oci.documents import Descriptor

        store, layer, diff_id = self.store, record["layer"], record["diff_id"]
        compressed = store.tmp_file("cache-blob-")
        tar = store.tmp_file("cache-layer-")
        try:
            backend.fetch_blob(layer, compressed)
            digest, size = sha256_file(compressed)
            if digest != layer["digest"] or size != layer["size"]:
                raise CacheError(f"blob {layer['digest']} does not match its digest "
                                 f"(got {digest}, {size} bytes)")
            with open(compressed, "rb") as raw:
                actual = decompress_to(raw, tar, f"layer {layer['digest']}")
            if actual != diff_id:
                raise CacheError(f"blob {layer['digest']} is not layer {diff_id} "
                                 f"(it decompresses to {actual})")
            commit_applied(store, tar, diff_id, lowers, f"layer {layer['digest']}",
                           "cache-import-")
            backend.remember(store, diff_id, Descriptor(layer["mediaType"], layer["digest"],
                                                        layer["size"]))
            kind = compression_of(layer["mediaType"])
            if kind not in (None, "none"):
                with suppress(StepbuildError, OSError):
                    store.ingest_blob(compressed, layer["digest"])
                    if store.compressed_records.get(diff_id, kind) is None:
                        store.compressed_records.put(diff_id, kind, Descriptor(
                            layer["mediaType"], layer["digest"], layer["size"]))
        except DigestMismatch as exc:
            raise CacheError(exc.message) from None
        finally:
            for path in (compressed, tar):
                with suppress(FileNotFoundError):
                    path.unlink()

    # --- cache mounts (the build passes this cache to build.mounts as its CacheMountObserver)

    def _ours(self, store_root: Path) -> bool:
        return bool(os.path.realpath(store_root) == os.path.realpath(self.store.root))

    def cache_mount_planned(self, p: CacheMount) -> None:
        """A RUN of this build declared cache mount `p` (it runs or hits): export the
        cache if our store has it."""
        if any(s.cache_mounts for s, _ in self.destinations):
            base = self.store.layout.cache_mount(p.identity)
            with self._lock:
                self._mounts.setdefault(base.name, (p.cache_id, dict(p.identity), base))

    def cache_mount_used(self, store_root: Path, p: CacheMount, base: Path) -> None:
        if self._ours(store_root) and any(s.cache_mounts for s, _ in self.destinations):
            with self._lock:
                self._mounts[base.name] = (p.cache_id, dict(p.identity), base)

    def cache_mount_seed(self, store_root: Path, p: CacheMount
                         ) -> Callable[[Path], None] | None:
        """A seed for the new cache mount `p` from the first source that has it, or None."""
        if not self._ours(store_root) or not self.sources:
            return None
        name = cache_mount_name(p.identity)
        for index, (spec, backend) in enumerate(self.sources):
            if index in self._broken:
                continue
            try:
                record = backend.mount_record(name)
            except CacheError as exc:
                self.warn(f"cache {spec.describe()}: cache mount {p.cache_id}: {exc.message};"
                          " starting it empty")
                continue
            if record is not None:
                return lambda into: self._seed_mount(spec, backend, record, into)
        return None

    def _seed_mount(self, spec: CacheSpec, backend: CacheBackend, record: dict[str, Any],
                    into: Path) -> None:
        """Unpack the cache mount blob of `record` into the new instance dir `into` (empty,
        in the store); on any failure, leave it empty and warn."""
        from stepbuild.layers.unpack import unpack_archive

        blob = self.store.tmp_file("cache-mount-blob-")
        try:
            backend.fetch_blob({"digest": record["digest"], "size": record["size"]}, blob)
            digest, size = sha256_file(blob)
            if digest != record["digest"] or size != record["size"]:
                raise CacheError(f"blob {record['digest']} does not match its digest "
                                 f"(got {digest}, {size} bytes)")
            unpack_archive(blob, into, "/")
        except (StepbuildError, OSError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            self.warn(f"cache {spec.describe()}: cache mount {record['id']}: {message};"
                      " starting it empty")
            _empty_dir(into)
        finally:
            blob.unlink(missing_ok=True)

    def _mount_blobs(self) -> list[tuple[str, dict[str, Any], Path]]:
        """(name, record, blob path in the store's tmp) for every cache mount the build used
        that has content. Each is read under a shared lock on its main instance."""
        from stepbuild.fs.locks import flocked
        from stepbuild.layers.capture import capture
        from stepbuild.layers.compress import compress_stream

        out = []
        with self._lock:
            used = sorted(self._mounts.items())
        for name, (cache_id, identity, base) in used:
            data = base / "data"
            tar = self.store.tmp_file("cache-mount-tar-")
            blob = self.store.tmp_file("cache-mount-gz-")
            keep = False
            try:
                if not data.is_dir():
                    continue  # not in our store (never made here)
                with flocked(base / "data.lock", exclusive=False):
                    if not data.is_dir():
                        continue
                    layer = capture(data, [], tar)
                if layer is None:
                    continue  # an empty cache: nothing to seed another builder with
                with open(tar, "rb") as src, open(blob, "wb") as dst:
                    digest, size = compress_stream(src, dst, "gzip", size=layer.size,
                                                   expect=layer.diff_id)
                out.append((name, {"schema": MOUNT_SCHEMA, "id": cache_id,
                                   "identity": identity, "digest": digest, "size": size},
                            blob))
                keep = True
            except (StepbuildError, OSError) as exc:
                message = getattr(exc, "message", None) or str(exc)
                self.warn(f"cache mount {cache_id}: cannot export it: {message}")
            finally:
                tar.unlink(missing_ok=True)
                if not keep:
                    blob.unlink(missing_ok=True)
        return out

    # --- export ---------------------------------------------------------------------------

    def note(self, key: str, stage: int, diff_id: str | None, created: str,
             created_by: str) -> None:
        """A step of stage `stage` ran or hit with this result."""
        if self.destinations:
            with self._lock:
                self._used[key] = _Used(key, stage, diff_id, created, created_by)

    def export(self, final_stages: set[int]) -> int:
        """Write the noted steps to every destination; return how many records were written
        (to the last one that took them). mode=min: only steps of `final_stages`.

        A destination that fails raises `CacheExportError` naming it and the cause; one with
        ignore-error=true is reported through `warn` instead, and the others still run."""
        from stepbuild.layers.compress import compressed_layer

        written = 0
        mounts = (self._mount_blobs() if any(s.cache_mounts for s, _ in self.destinations)
                  else [])
        try:
            for spec, backend in self.destinations:
                steps = [u for u in self._used.values()
                         if spec.mode == "max" or u.stage in final_stages]
                steps = [u for u in steps if self._fetched_for_export(u, spec)]
                try:
                    written = self._export_to(backend, steps, compressed_layer,
                                              mounts if spec.cache_mounts else [])
                except (StepbuildError, OSError) as exc:
                    failed = CacheExportError(spec, _cause(exc))
                    if not spec.ignore_error:
                        raise failed from None
                    self.warn(f"{failed.message} (ignored: ignore-error=true)")
        finally:
            for _name, _record, blob in mounts:
                blob.unlink(missing_ok=True)
        return written

    def _fetched_for_export(self, used: _Used, spec: CacheSpec) -> bool:
        """Is `used`'s layer in the store (fetched now if a hit left it for later)?"""
        lazy = self._lazy.get(used.diff_id) if used.diff_id is not None else None
        if lazy is None:
            return True
        try:
            self.materialize((*lazy.parents, lazy.record["diff_id"]))
        except LazyLayerError as exc:
            self.warn(f"{exc.message}; not exported to {spec.describe()}")
            return False
        return True

    def _export_to(self, backend: CacheBackend, steps: list[_Used],
                   compressed_layer: Callable[[Store, str, str], Descriptor],
                   mounts: Sequence[tuple[str, dict[str, Any], Path]] = ()) -> int:
        import time

        from stepbuild.teamcache.registry import writer_id

        # Every record of this export carries its time and writer: `stepbuild cache prune`
        # keeps keys by last use and never drops a writer's newest export for space.
        used, writer = stamp(time.time()), writer_id(self.store.root)
        explained = self._explained  # each step's material goes with its record
        backend.prepare()
        for name, record, blob in mounts:  # a record only after its blob is there
            backend.put_file(record["digest"], record["size"], blob)
            backend.put_mount_record(name, {**record, "used": used, "writer": writer})
        for step in steps:  # a record only after its blob is there
            layer = None
            if step.diff_id is not None:
                desc = compressed_layer(self.store, step.diff_id, "gzip")
                backend.put_blob(self.store, step.diff_id, desc)
                layer = {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}
            backend.put_record(step.key, make_record(
                step.key, step.diff_id, layer, step.created, step.created_by, used=used,
                writer=writer, explain=explained.material(step.key)))
        backend.finish()
        return len(steps)


def _keys(backend: CacheBackend) -> list[str]:
    try:
        return backend.keys()
    except CacheError:
        return []


def _same_stage(found: Mapping[str, Any], made: Mapping[str, Any]) -> bool:
    if made.get("stage_name"):
        return bool(found.get("stage_name") == made["stage_name"])
    return bool(found.get("stage") == made.get("stage"))


def _cause(exc: StepbuildError | OSError) -> str:
    """One line of why an export failed: the error's own message, or an OSError's reason."""
    if isinstance(exc, StepbuildError):
        return exc.message.splitlines()[0] if exc.message else type(exc).__name__
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def _empty_dir(path: Path) -> None:
    """Remove everything below `path` (a new cache instance a failed seed wrote into)."""
    from stepbuild.fs.trees import remove_tree

    for entry in os.listdir(path):
        child = path / entry
        with suppress(OSError):
            if child.is_dir() and not child.is_symlink():
                remove_tree(child)
            else:
                child.unlink()
