"""The store's records: small JSON files that say something about content in the store.

    cache/<key>.json            a `CacheRecord` per step key: what the step produced; its
                                mtime is its last use (a hit refreshes it: `touch`)
    compressed/<hex>.<c>.json   the compressed blob made of layer <hex> with compression <c>
    remote-blobs/<hex>.json     registry repositories known to hold blobs of layer/config <hex>
    import-cache/<key>.json     the manifest an archive named in a FROM was imported as
    pushed/<hex>.json           the registry digests local manifest <hex> was pushed as

One class per kind owns its file format, its reads and writes and the listing of its files; a
`Store` holds one of each (`store.cache_records`, `store.compressed_records`,
`store.remote_records`, `store.import_records`, `store.push_records`). Which records to
delete is gc.py's call.

Every write is atomic (a temp file in tmp/, renamed). Cache and compressed records are also
durable (fsynced): they are prune roots or let an export skip recompressing. Remote-blob and
import records are hints, disposable, so not fsynced. A record that does not parse is a miss,
never an error (docs/security.md rule 7: a bad record costs time, never a build).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepbuild.errors import BlobNotFound, InvalidDocument, StepbuildError
from stepbuild.fs.durable import fsync_dir
from stepbuild.oci.digest import PREFIX, digest_hex, is_digest
from stepbuild.oci.documents import JSON, Descriptor, canonical_json, load_json

if TYPE_CHECKING:
    from stepbuild.store.store import Store

CACHE_KEY = re.compile(r"[0-9a-f]{32}")  # a step key: 32 hex digits of xxh3-128
MAX_SOURCES = 8  # repositories remembered per remote blob
MAX_REMOTE_BLOBS = 4  # blobs remembered per layer or config
_COMPRESSION = re.compile(r"[a-z0-9]{1,16}")
_COMPRESSED_NAME = re.compile(r"([0-9a-f]{64})\.([a-z0-9]{1,16})\.json")

RemoteBlob = tuple[Descriptor, tuple[str, ...]]  # a blob and the `host/repository`s holding it


# --- cache records ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheRecord:
    """What one step key produced: `cache/<key>.json`.

    On disk: the canonical JSON of `to_json`, with these field names. Optional fields that
    are unset are left out, so a record has exactly the bytes the builder (`inputs`,
    `started`, `finished`) or the team cache (`imported`) always wrote. `from_json` ignores
    fields it does not know.
    """

    diff_ids: tuple[str, ...]  # the step's layer; () for a step that added none
    created: str  # RFC 3339: when the step was first built (its history entry's time)
    created_by: str  # its history entry's text
    blobs: tuple[str, ...] = ()  # other blobs it depends on (prune keeps them)
    inputs: JSON | None = None  # what went into the key, to explain a miss
    started: float | None = None  # when it ran (time.time()), for people and tests
    finished: float | None = None
    imported: bool = False  # taken from a team cache (--cache-from), not run here

    @property
    def diff_id(self) -> str | None:
        """The step's layer, or None when it added none."""
        return self.diff_ids[0] if self.diff_ids else None

    def to_json(self) -> JSON:
        out: JSON = {"diff_ids": list(self.diff_ids), "created": self.created,
                     "created_by": self.created_by}
        if self.blobs:
            out["blobs"] = list(self.blobs)
        if self.inputs is not None:
            out["inputs"] = self.inputs
        if self.started is not None:
            out["started"] = self.started
        if self.finished is not None:
            out["finished"] = self.finished
        if self.imported:
            out["imported"] = True
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str) -> CacheRecord:
        """The record in a parsed JSON document; `InvalidDocument` if it is malformed."""
        if not isinstance(obj, dict):
            raise InvalidDocument(where, "a cache record must be a JSON object")
        for name in ("created", "created_by"):
            if not isinstance(obj.get(name), str):
                raise InvalidDocument(where, f"{name} must be a string")
        inputs = obj.get("inputs")
        if inputs is not None and not isinstance(inputs, dict):
            raise InvalidDocument(where, "inputs must be an object")
        if not isinstance(obj.get("imported", False), bool):
            raise InvalidDocument(where, "imported must be true or false")
        return cls(_digests(obj, "diff_ids", where), obj["created"], obj["created_by"],
                   _digests(obj, "blobs", where), inputs, _time(obj, "started", where),
                   _time(obj, "finished", where), obj.get("imported", False))


def touch(path: Path) -> None:
    """Mark the record at `path` used now (its mtime). Best effort: a record that cannot be
    touched (gone, a read-only store) only ages sooner."""
    with suppress(OSError):
        os.utime(path)


def _digests(obj: JSON, name: str, where: str) -> tuple[str, ...]:
    values = obj.get(name, [])
    if not isinstance(values, list) or not all(map(is_digest, values)):
        raise InvalidDocument(where, f"{name} must be a list of sha256 digests")
    return tuple(values)


def _time(obj: JSON, name: str, where: str) -> float | None:
    value: float | None = obj.get(name)  # an int stays an int: the bytes do not change
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise InvalidDocument(where, f"{name} must be a number")
    return value


class CacheRecords:
    """`cache/<key>.json`: the step cache. Records are roots for `gc.prune`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.dir = store.layout.cache
        self.corrupt = store.layout.corrupt

    def path(self, key: str) -> Path:
        """The record file of `key`; ValueError if `key` is not 32 lower-case hex digits."""
        if not isinstance(key, str) or not CACHE_KEY.fullmatch(key):
            raise ValueError(f"invalid cache key {key!r}: expected 32 lower-case hex digits")
        return self.dir / f"{key}.json"

    def get(self, key: str) -> CacheRecord | None:
        """The record for `key`, or None on a miss.

        A hit refreshes the record's mtime, its *last use*: prune removes the least recently
        used records first (policy.py). One utime(2), no write of the record's bytes.

        A miss is: no record; a record that does not parse (it is moved to cache/corrupt/);
        a record naming a layer or blob that is no longer in the store. Raises ValueError
        for a malformed key (a bug in the caller, not a user error).
        """
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                data, inode = f.read(), os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            return None
        try:
            record = CacheRecord.from_json(load_json(data, key), f"cache record {key}")
        except InvalidDocument:
            self._quarantine(path, inode)
            return None
        store = self.store
        if all(map(store.has_layer, record.diff_ids)) and all(map(store.has_blob, record.blobs)):
            touch(path)
            return record
        return None

    def put(self, key: str, record: CacheRecord) -> None:
        """Write the record for `key` (replacing any), atomically and durably.

        Its layers and blobs must already be committed (`BlobNotFound` otherwise): call this
        only after `commit_layer`/`put_blob` returned, never before (docs/security.md rule 5).
        `InvalidDocument` if it names something that is not a digest. Concurrent writers of
        one key: the last rename wins.
        """
        path = self.path(key)
        data = canonical_json(record.to_json())
        with self.store.lock(exclusive=False):
            self._check_content(key, record)
            self.store.write_file(path, data)

    def add(self, key: str, record: CacheRecord) -> CacheRecord:
        """Write the record for `key` unless a usable one is there already, which is kept;
        return the record now in force. The first record of a key wins.

        A `--no-cache` build, or a build racing another over the same step, makes a result
        of its own. Replacing the record with it would give a later fully cached rebuild of
        an image built before another layer or history time: another digest than the one
        that build printed (issue 11, item 10). A record `get` would not use (corrupt, or
        naming content that is gone) is replaced. Checks as `put`; durable as `put`.
        """
        path = self.path(key)
        data = canonical_json(record.to_json())
        with self.store.lock(exclusive=False):
            self._check_content(key, record)
            kept = self.get(key)
            if kept is not None:
                return kept
            tmp = self.store.tmp_file("record-")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, path)  # never replaces: a racing writer's record stays
                except FileExistsError:
                    kept = self.get(key)
                    if kept is not None:
                        return kept
                    os.rename(tmp, path)  # the one there is unusable: ours replaces it
            finally:
                with suppress(FileNotFoundError):
                    tmp.unlink()
            fsync_dir(self.dir)
        return record

    def _check_content(self, key: str, record: CacheRecord) -> None:
        """What a record names must be digests of content already in the store."""
        if not all(map(is_digest, (*record.diff_ids, *record.blobs))):
            raise InvalidDocument(f"cache record {key}", "it names something not a digest")
        for diff_id in record.diff_ids:
            if not self.store.has_layer(diff_id):
                raise BlobNotFound(diff_id, hint="commit the layer before its cache record")
        for digest in record.blobs:
            self.store.blob_path(digest)

    def scan(self) -> Iterator[tuple[Path, CacheRecord | None]]:
        """Every file in cache/ with its record (None if it does not parse)."""
        for entry in os.scandir(self.dir):
            if not entry.is_file(follow_symlinks=False):
                continue
            path = Path(entry.path)
            try:
                record: CacheRecord | None = CacheRecord.from_json(
                    load_json(path.read_bytes(), path.name), path.name)
            except (InvalidDocument, FileNotFoundError):
                record = None
            yield path, record

    def _quarantine(self, path: Path, inode: int) -> None:
        """Move a corrupt record aside, unless it was replaced since we read it."""
        try:
            if path.stat().st_ino == inode:
                os.rename(path, self.corrupt / f"{path.stem}.{time.time_ns()}.json")
        except FileNotFoundError:
            pass  # a concurrent reader moved it first


# --- compressed-blob records --------------------------------------------------------------


class CompressedRecords:
    """`compressed/<hex>.<compression>.json`: the compressed blob made of layer <hex>.

    Format: the blob's descriptor plus `"diff_id"` and `"compression"` (its name again, so a
    renamed file is not believed). Compressing is deterministic only for one compressor
    version; recording the blob lets every later export of the layer send the same bytes.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.dir = store.layout.compressed  # made by the first `put`

    def path(self, diff_id: str, compression: str) -> Path:
        if not isinstance(compression, str) or not _COMPRESSION.fullmatch(compression):
            raise ValueError(f"invalid compression name {compression!r}")
        return self.dir / f"{digest_hex(diff_id)}.{compression}.json"

    def get(self, diff_id: str, compression: str) -> Descriptor | None:
        """The recorded blob of layer `diff_id` compressed with `compression`, or None.

        None too when the record does not parse, does not match its name, or names a blob
        that is missing or of another size: the caller then compresses again and `put`
        replaces the record. The blob's content is not read here; whoever copies it
        verifies it.
        """
        path = self.path(diff_id, compression)
        try:
            desc = _compressed_blob(path.read_bytes(), diff_id, compression, path.name)
            if self.store.blob_path(desc.digest).stat().st_size != desc.size:
                return None
        except (InvalidDocument, BlobNotFound, FileNotFoundError):
            return None
        return desc

    def put(self, diff_id: str, compression: str, blob: Descriptor) -> None:
        """Record that `blob` is layer `diff_id` compressed with `compression`.

        Both blobs must be in the store (`BlobNotFound`), `blob` with its size
        (`DigestMismatch`): record only after the compressed blob was ingested (SECURITY
        rule 5). The caller vouches that `blob` decompresses to `diff_id` (`compress.py`
        checks it while compressing). Replaces any record for the pair, atomically.
        """
        path = self.path(diff_id, compression)
        record = {"compression": compression, "diff_id": diff_id, **blob.to_json()}
        with self.store.lock(exclusive=False):
            self.store.blob_path(diff_id)
            self.store.require_blob(blob)
            self.dir.mkdir(mode=0o700, exist_ok=True)
            self.store.write_file(path, canonical_json(record))

    def scan(self) -> Iterator[tuple[Path, Descriptor | None, str]]:
        """Every file: its path, its blob (None if bad) and the hex of its layer's diff_id."""
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return
        for entry in entries:
            path = Path(entry.path)
            match = _COMPRESSED_NAME.fullmatch(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False):
                yield path, None, ""
                continue
            hex_name, compression = match.groups()
            try:
                desc = _compressed_blob(path.read_bytes(), PREFIX + hex_name, compression,
                                        entry.name)
            except (InvalidDocument, FileNotFoundError):
                desc = None
            yield path, desc, hex_name


def _compressed_blob(data: bytes, diff_id: str, compression: str, where: str) -> Descriptor:
    """The blob a compressed-blob record names; `InvalidDocument` if it is malformed or is
    not the record of (diff_id, compression)."""
    record = load_json(data, where)
    if not isinstance(record, dict):
        raise InvalidDocument(where, "a compressed-blob record must be a JSON object")
    if record.get("diff_id") != diff_id or record.get("compression") != compression:
        raise InvalidDocument(where, "the record is not the one its name says")
    fields = {k: v for k, v in record.items() if k not in ("diff_id", "compression")}
    return Descriptor.from_json(fields, where)


# --- remote-blob records ------------------------------------------------------------------


class RemoteRecords:
    """`remote-blobs/<hex>.json`: which blobs hold a layer (<hex> of its diff_id) or a config
    (<hex> of its digest) in which registry repositories.

    Format: `{"id", "blobs": [{mediaType, digest, size, "sources": ["host/repository"]}]}`,
    most recent first. Written after every blob pushed, found or pulled (distribution/), read to
    find mount sources. Hints only: a stale record costs a refused mount and an upload.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.dir = store.layout.remote_blobs  # made by the first `add`
        self._lock = threading.Lock()  # one read-modify-write at a time (push threads)

    def path(self, content_id: str) -> Path:
        return self.dir / f"{digest_hex(content_id)}.json"

    def get(self, content_id: str) -> list[RemoteBlob]:
        """The blobs known to hold `content_id`, each with the `host/repository`s known to
        have it, most recent first. A missing or unreadable record is an empty list
        (`stepbuild check` reports a bad one, `prune` removes it)."""
        try:
            path = self.path(content_id)
            return parse_remote_record(path.read_bytes(), path.name)[1]
        except (OSError, StepbuildError):
            return []

    def add(self, content_id: str, blob: Descriptor, host: str, repository: str) -> None:
        """Remember that `host/repository` holds `blob`, which is `content_id` (a layer's
        diff_id: the blob decompresses to it; or a config's own digest). The caller vouches
        for that (it made the blob, or checked it): push sends what a record names without
        reading it. Best effort: a record that cannot be written is skipped."""
        source = f"{host}/{repository}"
        with self._lock:
            known = self.get(content_id)
            blobs: list[JSON] = []
            for desc, sources in [(blob, ()), *known]:
                if any(b["digest"] == desc.digest for b in blobs):
                    continue
                if desc.digest == blob.digest:
                    merged = [source, *(s for d, ss in known if d.digest == blob.digest
                                        for s in ss if s != source)]
                    sources = tuple(merged[:MAX_SOURCES])
                entry = {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}
                blobs.append({**entry, "sources": list(sources)})
            record = {"id": content_id, "blobs": blobs[:MAX_REMOTE_BLOBS]}
            with suppress(OSError):
                self.dir.mkdir(mode=0o700, exist_ok=True)
                _write_hint(self.store, self.path(content_id), canonical_json(record),
                            "remote-record-")

    def scan(self) -> Iterator[tuple[Path, str | None]]:
        """Every file with the content id it describes (None if bad)."""
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return
        for entry in entries:
            path = Path(entry.path)
            try:
                if not entry.is_file(follow_symlinks=False):
                    raise InvalidDocument(entry.name, "not a file")
                content_id: str | None = parse_remote_record(path.read_bytes(), entry.name)[0]
            except (InvalidDocument, FileNotFoundError):
                content_id = None
            yield path, content_id


def parse_remote_record(data: bytes, name: str) -> tuple[str, list[RemoteBlob]]:
    """The remote-blob record `remote-blobs/<name>`: its content id (a layer's diff_id or a
    config's digest) and each blob that holds that content, with the `host/repository`s
    known to have it. `InvalidDocument` if anything is malformed, or `name` is not
    `<hex of the id>.json`."""
    record = load_json(data, name)
    if not isinstance(record, dict) or not is_digest(record.get("id")):
        raise InvalidDocument(name, "a remote-blob record needs an \"id\" digest")
    content_id = str(record["id"])
    if name != f"{digest_hex(content_id)}.json":
        raise InvalidDocument(name, f"the record is of {content_id}, not of its name")
    blobs = record.get("blobs")
    if not isinstance(blobs, list):
        raise InvalidDocument(name, "\"blobs\" must be a list")
    found = []
    for entry in blobs:
        sources = entry.get("sources") if isinstance(entry, dict) else None
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise InvalidDocument(name, "every blob needs a list of \"sources\"")
        desc = Descriptor.from_json({k: v for k, v in entry.items() if k != "sources"}, name)
        found.append((desc, tuple(sources)))
    return content_id, found


# --- import records -----------------------------------------------------------------------


class ImportRecords:
    """`import-cache/<key>.json`: the manifest digest an archive named in a FROM was
    imported as, so an unchanged archive is imported once (archive/load.py).

    Format: `{"identity", "digest"}`; `identity` is a JSON list that says what makes the
    archive "the same" (load.py decides), <key> the first 32 hex digits of its sha256.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.dir = store.layout.import_cache  # made by the first `put`

    def path(self, identity: list[Any]) -> Path:
        return self.dir / f"{hashlib.sha256(canonical_json(identity)).hexdigest()[:32]}.json"

    def get(self, identity: list[Any]) -> str | None:
        """The manifest digest recorded for `identity`, or None (no record, a bad one, or
        one of another identity). Whether the store still has that image is the caller's
        question."""
        try:
            record = load_json(self.path(identity).read_bytes(), "import record")
        except (OSError, InvalidDocument):
            return None
        if not isinstance(record, dict) or record.get("identity") != identity:
            return None
        digest = record.get("digest")
        return str(digest) if is_digest(digest) else None

    def put(self, identity: list[Any], digest: str) -> None:
        """Record that the archive of `identity` was imported as manifest `digest`."""
        self.dir.mkdir(mode=0o700, exist_ok=True)
        _write_hint(self.store, self.path(identity),
                    canonical_json({"identity": identity, "digest": digest}), "import-record-")


class PushRecords:
    """`pushed/<hex>.json`: the registry digests the local image whose manifest is <hex> was
    pushed as (`stepbuild images --digests`). The registry holds another manifest than the
    store (compressed layers), so its digest cannot be computed from the store's alone.

    Format: `{"image": local manifest digest, "pushed": {"host/repository:tag": digest}}`,
    one entry per reference, the latest push of each. Hints: atomic, not fsynced; a record
    that does not parse reads as no pushes; `prune` removes those of manifests gone.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.dir = store.layout.pushed  # made by the first `add`
        self._lock = threading.Lock()  # one read-modify-write at a time in this process

    def path(self, image: str) -> Path:
        return self.dir / f"{digest_hex(image)}.json"

    def get(self, image: str) -> dict[str, str]:
        """Reference → registry digest of every recorded push of local manifest `image`."""
        try:
            record = load_json(self.path(image).read_bytes(), "push record")
        except (OSError, InvalidDocument):
            return {}
        pushed = record.get("pushed") if isinstance(record, dict) else None
        if record.get("image") != image or not isinstance(pushed, dict):
            return {}
        return {str(ref): digest for ref, digest in pushed.items() if is_digest(digest)}

    def add(self, image: str, reference: str, digest: str) -> None:
        """Record that local manifest `image` was pushed to `reference` (with its tag) and
        the registry holds it as `digest`. Best effort: a failed write is skipped."""
        with self._lock:
            pushed = {**self.get(image), reference: digest}
            with suppress(OSError):
                self.dir.mkdir(mode=0o700, exist_ok=True)
                _write_hint(self.store, self.path(image),
                            canonical_json({"image": image, "pushed": pushed}), "push-record-")

    def scan(self) -> Iterator[tuple[Path, str]]:
        """Every record file with the local manifest digest its name says."""
        with suppress(FileNotFoundError), os.scandir(self.dir) as entries:
            for entry in list(entries):
                name = entry.name.removesuffix(".json")
                if entry.name.endswith(".json") and is_digest(PREFIX + name):
                    yield Path(entry.path), PREFIX + name


def _write_hint(store: Store, final: Path, data: bytes, prefix: str) -> None:
    """Write a disposable record: temp + rename, atomic but not fsynced."""
    tmp = store.tmp_file(prefix)
    try:
        tmp.write_bytes(data)
        os.rename(tmp, final)
    finally:
        with suppress(FileNotFoundError):
            tmp.unlink()
