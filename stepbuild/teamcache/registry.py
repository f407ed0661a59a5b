"""The team cache in a registry: `--cache-to/--cache-from type=registry,ref=HOST/REPO:TAG`.

The cache is a set of OCI artifacts in REPO (artifactType `application/vnd.stepbuild.cache.v1+
json`): each manifest's config blob is a key → record map (records.py's records) and its
layers are the blobs those records name, so a registry's garbage collection keeps them.

A registry has no compare-and-set on tags, so two builders that both read-merge-write one tag
can lose each other's keys. Writers therefore never share a tag:

- **Writer tags** `TAG.w-<writer>`: each store (see `writer_id`) writes only its own, under a
  flock in its store, so its read-merge-write of it cannot race. Its manifest carries the
  annotation `dev.stepbuild.cache.tag: TAG`, so a reader never mistakes another cache's tag
  (a long TAG is cut to fit the 128-character limit) for one of TAG's writers.
- **The main tag** `TAG`: after writing its own tag, a writer folds every writer tag into TAG
  (best effort) and records in the annotation `dev.stepbuild.cache.writers` the manifest digest
  of each writer tag it folded in. Two writers folding at once may overwrite each other; that
  loses nothing, because the writer tags still hold every key.

A reader fetches TAG's map, lists the repository's tags and fetches only the writer tags whose
current digest TAG has not folded in yet — usually none, so a build costs one tag list and a
HEAD per writer besides the map. A digest reference (`REPO@sha256:…`) is one fixed map.

Every write of a tag deletes the manifest revision it replaces (when that revision is surely
this tag's alone: a writer tag names its writer in `dev.stepbuild.cache.writer`, TAG names
itself in `dev.stepbuild.cache.tag`), so a registry's garbage collection can free the blobs of
keys no map names any more; a registry with deletes off just keeps them. Writer tags are
deleted only by `stepbuild cache prune` (`registry_prune.py`), which folds them into TAG.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepbuild.errors import StepbuildError
from stepbuild.fs.locks import flocked
from stepbuild.oci.digest import sha256_bytes
from stepbuild.store.layout import StoreLayout
from stepbuild.teamcache.records import (
    ARTIFACT_TYPE,
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MOUNT_PREFIX,
    MOUNT_SCHEMA,
    CacheError,
    check_mount_record,
    check_record,
)

if TYPE_CHECKING:
    from stepbuild.distribution.client import Registry
    from stepbuild.distribution.connection import Connection
    from stepbuild.oci.documents import Descriptor
    from stepbuild.store.store import Store

__all__ = ["RegistryCache", "writer_id", "writer_tag"]

TAG_ANNOTATION = "dev.stepbuild.cache.tag"
WRITERS_ANNOTATION = "dev.stepbuild.cache.writers"
WRITER_ANNOTATION = "dev.stepbuild.cache.writer"
WRITER_INFIX = ".w-"
_MAX_TAG = 128  # the Distribution spec's limit on a tag's length
MAX_WRITERS = 256  # writer tags read per build: one HEAD each
_GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def writer_id(store_root: Path) -> str:
    """16 hex characters naming this store as a cache writer.

    A random id kept in the store, mixed with the host's name and machine id: a store copied
    to another machine (a CI runner restoring a cached store, say) is then another writer, and
    two runners restored from one snapshot do not race on one writer tag."""
    path = StoreLayout(store_root).writer_id
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = _create_token(path)
    machine = ""
    with suppress(OSError):
        machine = Path("/etc/machine-id").read_text().strip()
    mixed = f"{token}\0{socket.gethostname()}\0{machine}".encode()
    return hashlib.sha256(mixed).hexdigest()[:16]


def _create_token(path: Path) -> str:
    """Write a new random token to `path` unless a concurrent build just did; return it."""
    token = secrets.token_hex(16)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.link(tmp, path)  # fails if another build created it first: use theirs
    except FileExistsError:
        return path.read_text().strip()
    finally:
        os.unlink(tmp)
    return token


def writer_tag(tag: str, writer: str) -> str:
    """`TAG.w-<writer>`, TAG cut so that the whole stays a valid tag."""
    suffix = WRITER_INFIX + writer
    return tag[:_MAX_TAG - len(suffix)] + suffix


class RegistryCache:
    """One cache reference: the import side (`record`, `mount_record`, `fetch_blob`) and the
    export side (`prepare`, `put_*`, `finish`) of teamcache.TeamCache's backend interface
    (`backend.CacheBackend`)."""

    def __init__(self, ref: str, connection: Connection, store_root: Path,
                 warn: Callable[[str], None]) -> None:
        from stepbuild.distribution.reference import parse_reference

        self.ref = parse_reference(ref)
        self.connection = connection
        self.store_root = Path(store_root)
        self.warn = warn
        self._registry: Registry | None = None
        self.entries: dict[str, Any] | None = None  # the merged map, once read
        self._pending: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._annotations: dict[str, Any] = {}  # tag → annotations of its manifest, as read
        self._main_digest = ""  # TAG's manifest digest, as last read

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self.connection.open(self.ref.registry, self.ref.repository)
        return self._registry

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    @property
    def tag(self) -> str:
        return self.ref.digest or self.ref.tag or "latest"

    @property
    def writer_prefix(self) -> str:
        """What TAG's writer tags start with (a long TAG is cut as writers cut it)."""
        return writer_tag(self.tag, "0" * 16)[:-16]

    # --- import ---------------------------------------------------------------------------

    def record(self, key: str) -> dict[str, Any] | None:
        entries = self._load()
        return check_record(key, entries[key]) if key in entries else None

    def keys(self) -> list[str]:
        return sorted(k for k in self._load() if not k.startswith(MOUNT_PREFIX))

    def mount_record(self, name: str) -> dict[str, Any] | None:
        entries = self._load()
        entry = entries.get(MOUNT_PREFIX + name)
        return None if entry is None else check_mount_record(name, entry)

    def fetch_blob(self, layer: dict[str, Any], dest: Path) -> None:
        try:
            self.registry.get_blob(self.ref.repository, layer["digest"], dest, size=layer["size"])
        except StepbuildError as exc:
            raise CacheError(f"cannot fetch {layer['digest']} from {self.ref}: "
                             f"{exc.message}") from None

    def _load(self) -> dict[str, Any]:
        """The merged map, read once per build (left empty if the main tag cannot be read:
        CacheError then, and TeamCache stops asking this source)."""
        with self._lock:
            if self.entries is None:
                self.entries = {}
                self.entries = self._read_merged(warn=self.warn)[0]
            return self.entries

    def _read_merged(self, warn: Callable[[str], None] | None
                     ) -> tuple[dict[str, Any], dict[str, str]]:
        """(TAG's map with every writer tag not folded into it yet, writer tag → manifest
        digest of everything merged). A writer tag that cannot be read is skipped (`warn`)."""
        entries, folded, self._main_digest = self._read_tag(self.tag, writers=True)
        if self.ref.digest:
            return entries, folded
        merged, writers = dict(entries), dict(folded)
        for tag, digest in self._writer_tags():
            if folded.get(tag) == digest:
                continue
            try:
                more, _, read_digest = self._read_tag(tag, owner=self.tag)
            except CacheError as exc:
                if warn is not None:
                    warn(f"cache {self.ref}: writer tag {tag}: {exc.message}; skipped")
                continue
            merge_newer(merged, more)
            writers[tag] = read_digest
        return merged, writers

    def _writer_tags(self) -> Iterator[tuple[str, str]]:
        """(tag, current manifest digest) of TAG's writer tags, by name; at most MAX_WRITERS
        (each costs a request on every build: a registry with more is warned about)."""
        prefix = self.writer_prefix
        try:
            tags = self.registry.list_tags(self.ref.repository)
        except StepbuildError:
            return  # an unknown repository has no writers; the main map decides
        writers = sorted(t for t in tags if t.startswith(prefix))
        if len(writers) > MAX_WRITERS:
            self.warn(f"cache {self.ref}: {len(writers)} writer tags; reading the first "
                      f"{MAX_WRITERS} (keys only in the others are misses)")
        for tag in writers[:MAX_WRITERS]:
            try:
                found = self.registry.head_manifest(self.ref.repository, tag)
            except StepbuildError:
                continue
            if found is not None:
                yield tag, found[0]

    def _read_tag(self, tag: str, *, writers: bool = False, owner: str | None = None
                  ) -> tuple[dict[str, Any], dict[str, str], str]:
        """(map, folded writers (with `writers`), manifest digest) under `tag`; an unknown tag
        is ({}, {}, ""). `owner`: the main tag a writer tag must name. Raises CacheError."""
        repo = self.ref.repository
        try:
            if self.registry.head_manifest(repo, tag) is None:
                return {}, {}, ""
            data, _media, digest = self.registry.get_manifest(repo, tag)
            manifest = json.loads(data)
            if not isinstance(manifest, dict) or manifest.get("artifactType") != ARTIFACT_TYPE:
                raise CacheError(f"{self.ref.registry}/{repo}:{tag} is not a stepbuild cache")
            annotations = manifest.get("annotations") or {}
            if owner is not None and annotations.get(TAG_ANNOTATION) != owner:
                raise CacheError(f"it belongs to another cache "
                                 f"({annotations.get(TAG_ANNOTATION)!r})")
            folded = json.loads(annotations.get(WRITERS_ANNOTATION, "{}")) if writers else {}
            entries = self._read_config(manifest["config"])
            self._annotations[tag] = annotations
        except CacheError:
            raise
        except (StepbuildError, ValueError, KeyError, TypeError, OSError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            raise CacheError(f"cannot read the cache {self.ref.registry}/{repo}:{tag}: "
                             f"{message}") from None
        if not isinstance(entries, dict) or not isinstance(folded, dict):
            raise CacheError(f"{self.ref.registry}/{repo}:{tag}: the cache map is not an object")
        return entries, {str(k): str(v) for k, v in folded.items()}, digest

    def _read_config(self, config: dict[str, Any]) -> Any:
        with _scratch_path() as tmp:
            self.registry.get_blob(self.ref.repository, config["digest"], tmp,
                                   size=config["size"])
            return json.loads(tmp.read_bytes())

    # --- export ---------------------------------------------------------------------------

    def prepare(self) -> None:
        if self.ref.digest:
            raise CacheError(f"cannot export the cache to {self.ref}: a digest is not a tag")
        self._pending = {}

    def put_blob(self, store: Store, diff_id: str, desc: Descriptor) -> None:
        """HEAD, else mount from a repository known to hold it, else upload (the pusher of
        distribution/push.py, which also remembers that the registry has it)."""
        from stepbuild.distribution.display import TransferDisplay
        from stepbuild.distribution.push import BlobPusher

        pusher = BlobPusher(store, self.registry, self.ref, "gzip", TransferDisplay(quiet=True))
        pusher.send(diff_id, desc, diff_id.split(":", 1)[1][:12])

    def remember(self, store: Store, diff_id: str, desc: Descriptor) -> None:
        """An imported layer's blob is in REPO: a later push there mounts, not uploads."""
        with suppress(StepbuildError, OSError):
            store.remote_records.add(diff_id, desc, self.ref.registry, self.ref.repository)

    def put_record(self, key: str, record: dict[str, Any]) -> None:
        self._pending[key] = record

    def put_file(self, digest: str, size: int, path: Path) -> None:
        repo = self.ref.repository
        if self.registry.has_blob(repo, digest) is None:
            self.registry.put_blob(repo, digest, size, path)

    def put_mount_record(self, name: str, record: dict[str, Any]) -> None:
        self._pending[MOUNT_PREFIX + name] = record

    def finish(self) -> None:
        """Add our records to this store's writer tag, then fold all writers into TAG."""
        writer = writer_id(self.store_root)
        own = writer_tag(self.tag, writer)
        # Builds on one store export one at a time: they share the writer tag.
        with flocked(StoreLayout(self.store_root).writer_lock, exclusive=True, mode=0o644):
            previous = ""
            try:
                entries, _, previous = self._read_tag(own, owner=self.tag)
            except CacheError:
                entries = {}  # unreadable: rewritten from this build's records
            if self._annotations.get(own, {}).get(WRITER_ANNOTATION) != writer:
                previous = ""  # an older stepbuild's revision may be another tag's too
            self._write_map(own, {**entries, **self._pending},
                            {TAG_ANNOTATION: self.tag, WRITER_ANNOTATION: writer}, previous)
        try:
            self._fold()
        except StepbuildError as exc:  # our keys are safe in our writer tag
            self.warn(f"cache {self.ref}: could not update {self.tag} "
                      f"({exc.message}); readers find the keys in {own}")

    def _fold(self) -> None:
        """Best effort: TAG becomes the union of itself and every writer tag, so that readers
        usually need only TAG's map. A TAG that is not our cache is replaced (as BuildKit
        does)."""
        self._main_digest = ""
        try:
            merged, writers = self._read_merged(warn=None)
        except CacheError:
            merged, writers = {}, {}
            for tag, _digest in self._writer_tags():
                with suppress(CacheError):
                    more, _, digest = self._read_tag(tag, owner=self.tag)
                    merge_newer(merged, more)
                    writers[tag] = digest
        # An older stepbuild's TAG names no tag: delete its revision only if it names a writer
        # tag of ours (then no other cache's TAG has the same manifest).
        main = self._annotations.get(self.tag, {}) if self._main_digest else {}
        ours = main.get(TAG_ANNOTATION) == self.tag or any(
            t.startswith(self.writer_prefix) for t in json.loads(
                main.get(WRITERS_ANNOTATION, "{}")))
        self.write_main(merged, writers, self._main_digest if ours else "")

    def write_main(self, merged: dict[str, Any], writers: dict[str, str], previous: str) -> str:
        """TAG becomes `merged`, having folded in `writers` (writer tag → manifest digest);
        its revision `previous` is deleted. Returns the new manifest's digest."""
        return self._write_map(self.tag, merged,
                               {TAG_ANNOTATION: self.tag,
                                WRITERS_ANNOTATION: json.dumps(writers, sort_keys=True,
                                                               separators=(",", ":"))},
                               previous)

    def _write_map(self, tag: str, merged: dict[str, Any], annotations: dict[str, str],
                   previous: str = "") -> str:
        """Push the map as a config blob and tag an artifact manifest naming it and its
        blobs; return the manifest's digest. The revision `previous` the tag had is then
        deleted (best effort), so that garbage collection may free what only it named."""
        repo = self.ref.repository
        entries = dict(sorted(_valid(merged).items()))
        config = json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()
        config_digest = sha256_bytes(config)
        with _scratch_path() as tmp:
            tmp.write_bytes(config)
            if self.registry.has_blob(repo, config_digest) is None:
                self.registry.put_blob(repo, config_digest, len(config), tmp)
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
                    "artifactType": ARTIFACT_TYPE,
                    "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest,
                               "size": len(config)},
                    "layers": _blobs_of(entries), "annotations": annotations}
        data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        digest = str(self.registry.put_manifest(repo, tag, data, MANIFEST_MEDIA_TYPE))
        if previous and previous != digest:
            # Readers fetch maps by tag, and blobs live until a GC: nothing in use goes.
            with suppress(StepbuildError):
                self.registry.delete_manifest(repo, previous)
        return digest


def merge_newer(merged: dict[str, Any], more: dict[str, Any]) -> None:
    """Add `more`'s entries to `merged`; of two records of one name, the later export's."""
    for name, record in more.items():
        have = merged.get(name)
        if have is None or (isinstance(record, dict) and isinstance(have, dict)
                            and str(record.get("used", "")) > str(have.get("used", ""))):
            merged[name] = record


@contextmanager
def _scratch_path() -> Iterator[Path]:
    """A path for one small blob on its way to or from the registry, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="stepbuild-cache-map-") as tmp:
        yield Path(tmp) / "blob"


def _valid(entries: dict[str, Any]) -> dict[str, Any]:
    """The entries that are well-formed records for their names. (A reader warns about a
    malformed one at lookup; a writer drops it, so that no manifest it writes names a blob
    that is not a descriptor.)"""
    valid = {}
    for name, record in entries.items():
        with suppress(CacheError):
            if name.startswith(MOUNT_PREFIX):
                valid[name] = check_mount_record(name[len(MOUNT_PREFIX):], record)
            else:
                valid[name] = check_record(name, record)
    return valid


def _blobs_of(entries: dict[str, Any]) -> list[dict[str, Any]]:
    """The layer descriptors of every blob the map names, once each: the manifest references
    them so that a registry's garbage collection keeps them."""
    layers, seen = [], set()
    for record in entries.values():
        layer = record.get("layer")
        if record.get("schema") == MOUNT_SCHEMA:  # a cache mount's blob
            layer = {"mediaType": _GZIP_LAYER, "digest": record["digest"],
                     "size": record["size"]}
        if layer and layer["digest"] not in seen:
            seen.add(layer["digest"])
            layers.append({"mediaType": layer["mediaType"], "digest": layer["digest"],
                           "size": layer["size"]})
    return layers
