"""The local store: content-addressed blobs, unpacked layer dirs, tags, cache records.

The store root is itself an OCI image layout (image-layout.md), so `skopeo copy oci:<root>:app`
and `umoci` read it as it is; the rest is ours and those tools ignore it:

    oci-layout                  {"imageLayoutVersion":"1.0.0"}
    index.json                  tagged manifests; a tag is an org.opencontainers.image.ref.name
    blobs/sha256/<hex>          blobs, named by digest (configs, manifests, layer tars)
    layers/<hex>/diff/          a layer unpacked (an overlay lower dir); <hex> of its diff_id
    cache/<key>.json            one cache record per step key; cache/corrupt/ for bad ones
    compressed/<hex>.<c>.json   the compressed blob made of layer <hex> with compression <c>
    remote-blobs/<hex>.json     registry repositories that hold blobs of layer/config <hex>
                                (written by transfer.py; parsed by `parse_remote_record`)
    tmp/                        every write starts here (same filesystem), then rename(2)s
    lock, index.lock            flock(2) files: the store lock and the index.json lock

Owns paths, atomicity, durability, locking and garbage collection. It does not build tars,
unpack layers or decide what a cache record means beyond the content it names.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from stepbuild.errors import (
    BlobNotFound,
    DigestMismatch,
    InvalidDocument,
    StoreError,
)
from stepbuild.fs.durable import fsync_dir, write_file
from stepbuild.fs.locks import flocked
from stepbuild.fs.trees import remove_tree
from stepbuild.oci.digest import (
    PREFIX,
    Digest,
    digest_hex,
    is_digest,
    is_digest_hex,
    sha256_bytes,
    sha256_file,
)
from stepbuild.oci.documents import (
    ANNOTATION_REF_NAME,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    canonical_json,
    layout_header,
    load_json,
    validate_layout,
)

GRACE_PERIOD = 3600.0  # seconds: prune never deletes anything younger
MAX_MANIFEST_SIZE = 4 << 20  # what registries accept; a bigger blob is not a manifest

_T = TypeVar("_T")
_KEY = re.compile(r"[0-9a-f]{32}")
_HEX_PREFIX = re.compile(r"[0-9a-f]{12,64}")
_STAGING = re.compile(r"[0-9a-f]{64}\.tmp-.+")
_COMPRESSION = re.compile(r"[a-z0-9]{1,16}")
_COMPRESSED_RECORD = re.compile(r"([0-9a-f]{64})\.([a-z0-9]{1,16})\.json")
REMOTE_DIR = "remote-blobs"
# image-layout.md, "ref.name": component ("/" component)*, separators -._:@+ and "--".
_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")


@dataclass(frozen=True, slots=True)
class PruneStats:
    """What one `Store.prune()` removed. `bytes_freed` counts blob bytes only."""

    blobs: int = 0
    layers: int = 0
    cache_records: int = 0
    tmp_entries: int = 0
    compressed_records: int = 0
    remote_records: int = 0
    bytes_freed: int = 0


class Store:
    """A content-addressed store of blobs, layer dirs, tags and cache records.

    Glossary: a *digest* (`sha256:<hex>`) names a blob by its bytes; a *diff_id* is the
    digest of an uncompressed layer tar and names the unpacked layer dir; a *key* is a
    step's cache key (32 hex digits of xxh3-128); a *ref* is a name in index.json (a tag).

    Lifecycle of one step (the builder's order; each arrow is durable before the next):

        upper = store.tmp_dir("upper-")           # the step's overlay upperdir
        tar = store.tmp_file("layer-")            # layer.py writes the tar, hashing it
        path = store.commit_layer(upper, diff_id, tar)   # blob first, then the dir
        store.put_cache(key, {"diff_ids": [diff_id], ...})  # only after the layer is in
        ...
        desc = store.put_image(config, layers)    # config + manifest blobs
        store.tag("app:1.0", desc)                # index.json, last

    Contracts that hold for every method:
    - Atomic: each final name (blob, layer dir, cache record, index.json) appears complete
      or not at all. Everything is written under tmp/ (or a staging name beside the final
      one), fsynced, renamed into place, and the directory fsynced (docs/security.md rule 5). A
      crash leaves only garbage in tmp/ (or `layers/<hex>.tmp-*`); `check()` stays clean
      and `prune()` removes it once it is older than the grace period.
    - Idempotent: putting content that is already there succeeds and changes nothing
      (it refreshes the mtime, so a concurrent prune's grace period covers it).
    - Verified: `read_blob` and `ingest_blob` hash what they read; digests are validated
      before they become paths (`InvalidDigest`).
    - References after content: `put_image`, `tag` and `put_cache` refuse to name blobs or
      layers that are not in the store (`BlobNotFound`).
    - Errors are `StoreError` subclasses; OSError from the filesystem passes through.

    Concurrency: any number of processes may use one store. Writers of the same content
    race benignly (the first rename wins; the others discard theirs). index.json is
    read-modify-written under an exclusive flock on `index.lock`. Every mutating method
    holds the store `lock` shared for its duration; `prune()` holds it exclusive, so it
    never runs in the middle of a write. Across calls (commit_layer ... put_cache) content
    is protected by the grace period; a build that wants more holds `lock(exclusive=False)`
    from start to end, and prune then waits for it.
    """

    def __init__(self, root: Path, *, grace_period: float = GRACE_PERIOD) -> None:
        """Open the store at `root`, creating whatever part of the layout is missing.

        Directories are created 0700. Safe to run concurrently: `oci-layout` and
        `index.json` are created with link(2), which never replaces an existing file.
        `grace_period` (seconds) is how old garbage must be before `prune` deletes it.
        """
        self.root = Path(root)
        self.grace_period = grace_period
        self._blobs = self.root / "blobs" / "sha256"
        self._layers = self.root / "layers"
        self._cache = self.root / "cache"
        self._corrupt = self._cache / "corrupt"
        self._tmp = self.root / "tmp"
        self._compressed = self.root / "compressed"  # made by the first record_compressed
        self._remote = self.root / REMOTE_DIR  # made by transfer.record_remote_blob
        self._index = self.root / "index.json"
        self._held = threading.local()
        self.resolved: set[str] = set()  # every name `resolve` was asked (fingerprint.py)
        self._create_layout()

    def _create_layout(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path in (
            self._blobs.parent,
            self._blobs,
            self._layers,
            self._cache,
            self._corrupt,
            self._tmp,
        ):
            path.mkdir(mode=0o700, exist_ok=True)
        self._create_if_absent(self.root / "oci-layout", layout_header())
        self._create_if_absent(self._index, Index().to_bytes())

    def _create_if_absent(self, path: Path, data: bytes) -> None:
        if path.exists():
            return
        tmp = self._write_temp("init-", data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: theirs is as good as ours
        finally:
            _unlink(tmp)
        fsync_dir(path.parent)

    # --- temp space -------------------------------------------------------------------------

    def tmp_dir(self, prefix: str) -> Path:
        """A new, empty, uniquely named dir under tmp/ (0700). The caller renames it into
        the store (e.g. via `commit_layer`) or deletes it; `prune` removes it once stale."""
        return Path(tempfile.mkdtemp(prefix=_check_prefix(prefix), dir=self._tmp))

    def tmp_file(self, prefix: str) -> Path:
        """A new, empty, uniquely named file under tmp/ (0600), for `ingest_blob` or
        `commit_layer` to consume. Same cleanup rules as `tmp_dir`."""
        fd, name = tempfile.mkstemp(prefix=_check_prefix(prefix), dir=self._tmp)
        os.close(fd)
        return Path(name)

    def _write_temp(self, prefix: str, data: bytes) -> Path:
        """A durable (fsynced) temp file holding `data`."""
        fd, name = tempfile.mkstemp(prefix=prefix, dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            _unlink(Path(name))
            raise
        return Path(name)

    # --- locks ------------------------------------------------------------------------------

    @contextmanager
    def lock(self, exclusive: bool = True) -> Iterator[None]:
        """Hold the store lock: shared (users: builds, writes) or exclusive (prune).

        flock(2) on `<root>/lock`, not POSIX `lockf`/`fcntl` record locks: record locks
        belong to the process and *all* of them are dropped when the process closes *any*
        descriptor of the file (fcntl(2), "Advisory record locking"), which a library cannot
        rule out; a flock belongs to its open file description, so each holder holds exactly
        its own. Charliecloud chose lockf because it works over NFS; since Linux 2.6.12
        flock on NFS is emulated with byte-range locks (flock(2), NOTES), so it works there
        too. Locks are advisory and vanish with the process (a crash cannot leave a store
        locked). A fork()ed child shares its parent's held locks (same open file
        description) until it execs (the fds are O_CLOEXEC) or exits: fork before locking.

        Re-entrant per thread for one Store object: a nested `lock()` inside one this
        thread already holds (exclusive, or shared inside shared) takes nothing new.
        Asking for exclusive while holding shared raises `StoreError` (no upgrades: two
        upgraders would deadlock).
        """
        mode = getattr(self._held, "mode", None)
        if mode == "ex" or (mode == "sh" and not exclusive):
            yield
            return
        if mode == "sh":
            raise StoreError("cannot take the store lock exclusively while holding it shared")
        with flocked(self.root / "lock", exclusive=exclusive):
            self._held.mode = "ex" if exclusive else "sh"
            try:
                yield
            finally:
                self._held.mode = None

    @contextmanager
    def _index_lock(self) -> Iterator[None]:
        """Exclusive flock on `index.lock` around a read-modify-write of index.json.

        A separate file from `lock`, so that a process holding the store lock shared (a
        build) can still update tags.
        """
        with flocked(self.root / "index.lock", exclusive=True):
            yield

    # --- blobs ------------------------------------------------------------------------------

    def _blob_file(self, digest: str) -> Path:
        return self._blobs / digest_hex(digest)

    def blob_path(self, digest: str) -> Path:
        """The path of a blob. Raises `BlobNotFound` if absent, `InvalidDigest` if malformed.

        The file is read-only and must stay so; its content is *not* verified here.
        """
        path = self._blob_file(digest)
        if not path.is_file():
            raise BlobNotFound(digest)
        return path

    def has_blob(self, digest: str) -> bool:
        """True if a blob with this digest is present (not verified)."""
        return self._blob_file(digest).is_file()

    def read_blob(self, digest: str) -> bytes:
        """A blob's bytes, verified. Raises `BlobNotFound` or `DigestMismatch`."""
        try:
            data = self._blob_file(digest).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(digest) from None
        actual = sha256_bytes(data)
        if actual != digest:
            raise DigestMismatch(digest, actual, actual_size=len(data))
        return data

    def descriptor(self, digest: str, media_type: str) -> Descriptor:
        """A descriptor for a blob in the store (its size from disk). Raises `BlobNotFound`."""
        return Descriptor(media_type, digest, self.blob_path(digest).stat().st_size)

    def put_blob(self, data: bytes) -> tuple[str, int]:
        """Store `data` as a blob; return `(digest, size)`. Idempotent and atomic."""
        digest, size = sha256_bytes(data), len(data)
        with self.lock(exclusive=False):
            if self._reuse_blob(digest, size):
                return digest, size
        self._install_blob(self._write_temp("blob-", data), digest, size)
        return digest, size

    def ingest_blob(self, path: Path, digest: str | None = None) -> tuple[str, int]:
        """Move a file in as a blob; return `(digest, size)`.

        The file is hashed; if `digest` is given it must match (`DigestMismatch`) — check
        before you trust (docs/security.md rule 4). A file under tmp/ is consumed: moved into place,
        or deleted on any error. A file elsewhere is copied into tmp/ first and left alone.
        If the blob already exists, ours is discarded and the call succeeds. The blob and
        its directory are fsynced before this returns.
        """
        if digest is not None:
            Digest.parse(digest)
        path = self._own_temp(Path(path))
        try:
            actual, size = sha256_file(path)
            if digest is not None and actual != digest:
                raise DigestMismatch(digest, actual, actual_size=size)
            _fsync_path(path)
        except BaseException:
            _unlink(path)
            raise
        self._install_blob(path, actual, size)
        return actual, size

    def _own_temp(self, path: Path) -> Path:
        """`path` if it is under tmp/, else a copy of it there."""
        if path.resolve().is_relative_to(self._tmp.resolve()):
            return path
        copy = self.tmp_file("ingest-")
        try:
            shutil.copyfile(path, copy)
        except BaseException:
            _unlink(copy)
            raise
        return copy

    def _install_blob(self, tmp: Path, digest: str, size: int) -> None:
        """Rename a durable temp file to its blob name, unless an intact one is there."""
        os.chmod(tmp, 0o444)
        try:
            with self.lock(exclusive=False):
                if self._reuse_blob(digest, size):
                    _unlink(tmp)
                    return
                os.rename(tmp, self._blob_file(digest))
        except BaseException:
            _unlink(tmp)
            raise
        fsync_dir(self._blobs)

    def _reuse_blob(self, digest: str, size: int) -> bool:
        """True if the blob is already there with the right size; refreshes its mtime.

        A present blob of the wrong size (a torn or damaged file) is replaced by ours.
        """
        path = self._blob_file(digest)
        try:
            if path.stat().st_size != size:
                return False
            os.utime(path)
        except FileNotFoundError:
            return False
        return True

    # --- layers -----------------------------------------------------------------------------

    def layer_dir(self, diff_id: str) -> Path:
        """`layers/<hex>/diff` for a diff_id; it may not exist (see `has_layer`)."""
        return self._layers / digest_hex(diff_id) / "diff"

    def has_layer(self, diff_id: str) -> bool:
        """True if the layer dir is committed *and* its blob is present (usable)."""
        return self.layer_dir(diff_id).is_dir() and self.has_blob(diff_id)

    def commit_layer(self, upper: Path, diff_id: str, tar_path: Path) -> Path:
        """Commit a captured layer: its tar as the blob `diff_id`, `upper` as its dir.

        Order: the tar is ingested first (verified: its sha256 must be `diff_id`, else
        `DigestMismatch` and nothing is committed), then `upper` — a dir under tmp/ on the
        same filesystem — is renamed to `layers/<hex>.tmp-XXXX/diff` and that staging dir to
        `layers/<hex>`, so the layer dir appears complete or not at all, and never without
        its blob. If the layer is already there (another build won the race), `upper` is
        deleted and the existing dir returned. Returns `layers/<hex>/diff`.

        The files inside `upper` are not fsynced one by one (that costs seconds for a big
        tree); after a power loss a layer dir can be rebuilt from its blob, which is.
        """
        self.ingest_blob(tar_path, diff_id)
        final = self._layers / digest_hex(diff_id)
        with self.lock(exclusive=False):
            if not final.is_dir():
                self._rename_layer(Path(upper), final)
            else:
                self._discard(Path(upper))
            os.utime(final)
        fsync_dir(self._layers)
        return final / "diff"

    def _rename_layer(self, upper: Path, final: Path) -> None:
        staging = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=self._layers))
        os.rename(upper, staging / "diff")
        try:
            os.rename(staging, final)
        except OSError as exc:  # rename(2) onto a non-empty dir: someone was faster
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            self._discard(staging)

    def _discard(self, path: Path) -> None:
        """Delete a tree: first rename it into tmp/ (atomic), then remove it there."""
        trash = Path(tempfile.mkdtemp(prefix="discard-", dir=self._tmp))
        with suppress(FileNotFoundError):
            os.rename(path, trash / "x")
        remove_tree(trash)

    # --- images and tags --------------------------------------------------------------------

    def put_image(
        self,
        config: ImageConfig,
        layers: Sequence[Descriptor],
        annotations: dict[str, str] | None = None,
    ) -> Descriptor:
        """Write the config and manifest blobs; return the manifest's descriptor (untagged).

        Every layer blob must already be in the store with the size its descriptor gives
        (`BlobNotFound`, `DigestMismatch`), and the config must have one diff_id per layer
        (`InvalidDocument`). At least one layer is required (the OCI schema says so; use
        `oci.EMPTY_LAYER` for an image that has none). Idempotent: the same input gives the
        same digest. The descriptor carries the config's platform.
        """
        layers = tuple(layers)
        _check_layers_match(config, layers)
        with self.lock(exclusive=False):
            for layer in layers:
                self._check_blob_size(layer)
            config_digest, config_size = self.put_blob(config.to_bytes())
            manifest = Manifest(
                Descriptor(MEDIA_TYPE_CONFIG, config_digest, config_size),
                layers,
                annotations or None,
            )
            digest, size = self.put_blob(manifest.to_bytes())
        return Descriptor(MEDIA_TYPE_MANIFEST, digest, size, platform=config.platform)

    def _check_blob_size(self, desc: Descriptor) -> None:
        size = self.blob_path(desc.digest).stat().st_size
        if size != desc.size:
            raise DigestMismatch(desc.digest, None, expected_size=desc.size, actual_size=size)

    def tag(self, name: str, manifest: Descriptor) -> None:
        """Point the ref `name` (e.g. "app:1.0") at a manifest in index.json.

        Replaces an existing ref of that name in place; other refs are untouched. The
        manifest blob must be in the store (`BlobNotFound`). Names follow the image-layout
        ref grammar (`StoreError` otherwise); the store does not normalise them ("app" and
        "app:latest" are different refs — normalise before calling). Atomic and safe
        against concurrent taggers (index.lock).
        """
        _check_ref_name(name)
        if manifest.media_type not in MANIFEST_TYPES | INDEX_TYPES:
            raise StoreError(f"cannot tag a {manifest.media_type}: not a manifest or index")
        annotations = {**(manifest.annotations or {}), ANNOTATION_REF_NAME: name}
        entry = replace(manifest, annotations=annotations)
        with self.lock(exclusive=False), self._index_lock():
            self.blob_path(manifest.digest)
            index = self._read_index()
            manifests = _with_ref(index.manifests, entry)
            if manifests == tuple(index.manifests):
                return  # already so (a no-op rebuild): no rewrite, no fsync
            self._write_index(replace(index, manifests=manifests))

    def untag(self, name: str) -> bool:
        """Remove the ref `name`; True if it existed. Blobs stay (until `prune`)."""
        with self.lock(exclusive=False), self._index_lock():
            index = self._read_index()
            kept = tuple(d for d in index.manifests if d.ref_name != name)
            if len(kept) == len(index.manifests):
                return False
            self._write_index(replace(index, manifests=kept))
        return True

    def resolve(self, name: str) -> Descriptor | None:
        """The manifest descriptor for a ref, a manifest digest, or a digest hex prefix.

        Tried in order: a full digest `sha256:<hex>` (an index entry, or an untagged
        image whose manifest and config blobs are present); a ref by exact name; 12 to 64
        lower-case hex digits that prefix exactly one manifest digest in index.json
        (several: `StoreError`, ambiguous).
        None if nothing matches. The descriptor has no ref-name annotation.
        """
        self.resolved.add(name)
        manifests = self._read_index().manifests
        if name.startswith(PREFIX):
            return self._by_digest(name, manifests)
        for desc in manifests:
            if desc.ref_name == name:
                return _without_ref(desc)
        if _HEX_PREFIX.fullmatch(name):
            return _by_prefix(name, manifests)
        return None

    def _by_digest(self, digest: str, manifests: Sequence[Descriptor]) -> Descriptor | None:
        if not is_digest(digest):
            return None
        for desc in manifests:
            if desc.digest == digest:
                return _without_ref(desc)
        path = self._blob_file(digest)
        if not path.is_file() or path.stat().st_size > MAX_MANIFEST_SIZE:
            return None
        try:
            data = self.read_blob(digest)
            manifest = Manifest.from_bytes(data)
            platform = self.config(manifest).platform
        except (InvalidDocument, DigestMismatch, BlobNotFound):
            return None
        return Descriptor(manifest.media_type, digest, len(data), platform=platform)

    def images(self) -> list[tuple[str, Descriptor]]:
        """All refs and their manifest descriptors, sorted by name."""
        return sorted(
            (d.ref_name, _without_ref(d)) for d in self._read_index().manifests if d.ref_name
        )

    def manifest(self, desc: Descriptor) -> Manifest:
        """Read, verify and parse a manifest. `BlobNotFound`, `DigestMismatch`,
        `InvalidDocument`."""
        return Manifest.from_bytes(self._read_described(desc), f"manifest {desc.digest}")

    def config(self, manifest: Manifest) -> ImageConfig:
        """Read, verify and parse a manifest's image config (same errors as `manifest`)."""
        desc = manifest.config
        return ImageConfig.from_bytes(self._read_described(desc), f"config {desc.digest}")

    def _read_described(self, desc: Descriptor) -> bytes:
        data = self.read_blob(desc.digest)
        if len(data) != desc.size:
            raise DigestMismatch(desc.digest, None, expected_size=desc.size, actual_size=len(data))
        return data

    def _read_index(self) -> Index:
        try:
            data = self._index.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{self._index} is missing", hint="run `stepbuild check`") from None
        return Index.from_bytes(data, str(self._index))

    def _write_index(self, index: Index) -> None:
        write_file(self._index, index.to_bytes(), 0o600, tmp_dir=self._tmp)

    # --- cache records ----------------------------------------------------------------------

    def _cache_file(self, key: str) -> Path:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"invalid cache key {key!r}: expected 32 lower-case hex digits")
        return self._cache / f"{key}.json"

    def get_cache(self, key: str) -> dict[str, Any] | None:
        """The cache record for `key`, or None on a miss.

        A miss is: no record; a record that does not parse (it is moved to cache/corrupt/,
        docs/security.md rule 7: a bad cache entry costs a rebuild, never a failed build); a record
        naming a layer or blob that is no longer in the store. Raises ValueError for a key
        that is not 32 lower-case hex digits (a bug in the caller, not a user error).
        """
        path = self._cache_file(key)
        try:
            with open(path, "rb") as f:
                data, inode = f.read(), os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            return None
        try:
            record = load_json(data, f"cache record {key}")
            diff_ids, blobs = _record_refs(record, f"cache record {key}")
        except InvalidDocument:
            self._quarantine(path, inode)
            return None
        if all(map(self.has_layer, diff_ids)) and all(map(self.has_blob, blobs)):
            return dict(record)
        return None

    def put_cache(self, key: str, record: dict[str, Any]) -> None:
        """Write the cache record for `key` (replacing any), atomically and durably.

        A record is any JSON object; the store reads two optional fields of it, the content
        it depends on: `"diff_ids"` (layers: dir and blob) and `"blobs"` (other blobs, e.g.
        a config). Those must already be committed (`BlobNotFound` otherwise): call this
        only after `commit_layer`/`put_blob` returned, never before (docs/security.md rule 5).
        Records are roots for `prune`. Concurrent writers of one key: the last rename wins.
        """
        path = self._cache_file(key)
        data = canonical_json(record)
        diff_ids, blobs = _record_refs(record, f"cache record {key}")
        with self.lock(exclusive=False):
            for diff_id in diff_ids:
                if not self.has_layer(diff_id):
                    raise BlobNotFound(diff_id, hint="commit the layer before its cache record")
            for digest in blobs:
                self.blob_path(digest)
            write_file(path, data, 0o600, tmp_dir=self._tmp)

    def _quarantine(self, path: Path, inode: int) -> None:
        """Move a corrupt record aside, unless it was replaced since we read it."""
        try:
            if path.stat().st_ino == inode:
                os.rename(path, self._corrupt / f"{path.stem}.{time.time_ns()}.json")
        except FileNotFoundError:
            pass  # a concurrent reader moved it first

    def _records(self) -> Iterator[tuple[Path, dict[str, Any] | None]]:
        """Every cache record file with its parsed record (None if corrupt)."""
        for entry in os.scandir(self._cache):
            if not entry.is_file(follow_symlinks=False):
                continue
            path = Path(entry.path)
            try:
                record = load_json(path.read_bytes(), path.name)
                _record_refs(record, path.name)
            except (InvalidDocument, FileNotFoundError):
                record = None
            yield path, record

    # --- compressed layer blobs -------------------------------------------------------------

    def _compressed_file(self, diff_id: str, compression: str) -> Path:
        if not isinstance(compression, str) or not _COMPRESSION.fullmatch(compression):
            raise ValueError(f"invalid compression name {compression!r}")
        return self._compressed / f"{digest_hex(diff_id)}.{compression}.json"

    def compressed_blob(self, diff_id: str, compression: str) -> Descriptor | None:
        """The recorded blob of layer `diff_id` compressed with `compression`, or None.

        None too when the record does not parse, does not match its name, or names a blob
        that is missing or of another size: the caller then compresses again and
        `record_compressed` replaces the record (a bad record costs time, never an error).
        The blob's content is not read here; whoever copies it verifies it.
        """
        path = self._compressed_file(diff_id, compression)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            desc = _compressed_record(data, diff_id, compression, path.name)
        except InvalidDocument:
            return None
        try:
            if self.blob_path(desc.digest).stat().st_size != desc.size:
                return None
        except (BlobNotFound, FileNotFoundError):
            return None
        return desc

    def record_compressed(self, diff_id: str, compression: str, blob: Descriptor) -> None:
        """Record that `blob` is layer `diff_id` compressed with `compression`.

        Both blobs must be in the store (`BlobNotFound`), `blob` with its size
        (`DigestMismatch`): record only after the compressed blob was ingested
        (docs/security.md rule 5). The caller vouches that `blob` decompresses to `diff_id`
        (`compress.py` checks it while compressing). Replaces any record for the pair,
        atomically. A record is kept by `prune` as long as its diff_id is reachable, and
        keeps its blob alive.
        """
        path = self._compressed_file(diff_id, compression)
        data = canonical_json(_compressed_json(diff_id, compression, blob))
        with self.lock(exclusive=False):
            self.blob_path(diff_id)
            self._check_blob_size(blob)
            self._compressed.mkdir(mode=0o700, exist_ok=True)
            write_file(path, data, 0o600, tmp_dir=self._tmp)

    def _compressed_records(self) -> Iterator[tuple[Path, Descriptor | None, str]]:
        """Every record file: its path, blob descriptor (None if bad) and diff_id hex."""
        try:
            entries = list(os.scandir(self._compressed))
        except FileNotFoundError:
            return
        for entry in entries:
            path = Path(entry.path)
            match = _COMPRESSED_RECORD.fullmatch(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False):
                yield path, None, ""
                continue
            hex_name, compression = match.groups()
            try:
                desc = _compressed_record(path.read_bytes(), PREFIX + hex_name, compression,
                                          entry.name)
            except (InvalidDocument, FileNotFoundError):
                desc = None
            yield path, desc, hex_name

    def _sweep_compressed(self, blobs: set[str], cutoff: float) -> int:
        """Remove the records of unreachable layers (and bad ones) older than `cutoff`; add
        the blobs of the records that stay to `blobs`: a record that stays keeps its
        compressed blob, and its layer blob (a young record of an unreachable layer would
        otherwise outlive the layer it describes)."""
        removed = 0
        for path, desc, hex_name in self._compressed_records():
            if desc is not None and hex_name in blobs:
                blobs.add(digest_hex(desc.digest))
            elif _remove_if_old(path, cutoff):
                removed += 1
            elif desc is not None:
                blobs.update((digest_hex(desc.digest), hex_name))
        return removed

    def _check_compressed(self) -> list[str]:
        problems = []
        for path, desc, hex_name in self._compressed_records():
            where = f"compressed/{path.name}"
            if desc is None:
                problems.append(f"{where}: not a valid compressed-blob record")
                continue
            if not self.has_blob(PREFIX + hex_name):
                problems.append(f"{where}: layer blob {PREFIX}{hex_name} is missing")
            if not self.has_blob(desc.digest):
                problems.append(f"{where}: blob {desc.digest} is missing")
            elif self._blob_file(desc.digest).stat().st_size != desc.size:
                problems.append(f"{where}: blob {desc.digest} is not {desc.size} bytes")
        return problems

    # --- remote-blob records (transfer.py writes and reads them) ----------------------------

    def _remote_records(self) -> Iterator[tuple[Path, str | None]]:
        """Every remote-blob record file with the content id it describes (None if bad)."""
        try:
            entries = list(os.scandir(self._remote))
        except FileNotFoundError:
            return
        for entry in entries:
            path = Path(entry.path)
            try:
                if not entry.is_file(follow_symlinks=False):
                    raise InvalidDocument(entry.name, "not a file")
                content_id, _ = parse_remote_record(path.read_bytes(), entry.name)
            except (InvalidDocument, FileNotFoundError):
                content_id = None
            yield path, content_id

    def _known(self, content_id: str) -> bool:
        """A layer (its dir or tar blob) or a config blob the store holds."""
        return self.has_blob(content_id) or self.has_layer(content_id)

    def _sweep_remote(self, marked: set[str]) -> int:
        """Remove corrupt records and those whose content is gone. No grace period: a record
        is only a hint, and every writer holds the store lock that prune holds exclusively.
        A reachable id stays even when absent: an image may name a layer the store only knows
        to be in a registry (transfer.py pushes it by mounting)."""
        removed = 0
        for path, content_id in self._remote_records():
            if content_id is not None and (digest_hex(content_id) in marked
                                           or self._known(content_id)):
                continue
            remove_tree(path)
            removed += 1
        return removed

    def _check_remote(self) -> list[str]:
        problems = []
        for path, content_id in self._remote_records():
            where = f"{REMOTE_DIR}/{path.name}"
            if content_id is None:
                problems.append(f"{where}: not a valid remote-blob record")
            elif not self._known(content_id):
                problems.append(f"{where}: names {content_id}, which is neither a layer nor a"
                                " blob in the store")
        return problems

    # --- maintenance ------------------------------------------------------------------------

    def prune(self, *, keep_cache: bool = True) -> PruneStats:
        """Delete what nothing references and is older than the grace period.

        Roots: every manifest in index.json (→ its config, layer blobs, and the layer dirs
        and blobs of its diff_ids; nested indexes followed) and, with `keep_cache`, every
        cache record (→ its diff_ids' dirs and blobs, its blobs). Without `keep_cache` the
        tags are the only roots and a cache record that names anything they do not reach is
        deleted too (`stepbuild prune`: "what no tag reaches"). A compressed-blob record
        (`record_compressed`) stays while its layer's diff_id is reachable, and keeps its
        compressed blob. Swept when unreferenced *and* older than `grace_period`: blobs,
        layer dirs, staging dirs `layers/*.tmp-*`, tmp/ entries, corrupt or dangling cache
        records, old entries of cache/corrupt/, compressed-blob records of unreachable layers.
        Remote-blob records (`remote-blobs/`) go, whatever their age, once the layer or config
        they describe is neither reachable nor in the store any more, and when corrupt.

        Takes the store lock exclusively (waits for every shared holder) and the index lock.
        Raises `StoreError` without deleting anything if a tagged manifest or its config is
        present but unreadable (its children cannot be marked; run `check()`). A tag whose
        manifest is missing marks nothing.
        """
        with self.lock(exclusive=True), self._index_lock():
            cutoff = time.time() - self.grace_period
            if keep_cache:
                counts = {"cache_records": self._sweep_cache(cutoff)}
                blobs, layers = self._mark()
            else:
                blobs, layers = self._mark(include_cache=False)
                counts = {"cache_records": self._sweep_cache(cutoff, blobs, layers)}
            # Records before the blobs they name; kept records mark their blobs.
            counts["compressed_records"] = self._sweep_compressed(blobs, cutoff)
            # Dirs before blobs: a layer dir must never outlive its blob (crash safety).
            counts["layers"] = self._sweep_layers(layers, cutoff)
            counts["blobs"], counts["bytes_freed"] = self._sweep_blobs(blobs, cutoff)
            counts["tmp_entries"] = self._sweep_dir(self._tmp, cutoff, lambda name: True)
            counts["remote_records"] = self._sweep_remote(blobs)  # after the blobs they name
        return PruneStats(**counts)

    def _mark(self, include_cache: bool = True) -> tuple[set[str], set[str]]:
        """The hex names of reachable blobs and layer dirs."""
        blobs: set[str] = set()
        layers: set[str] = set()
        for desc in self._read_index().manifests:
            self._mark_manifest(desc, blobs, layers)
        if not include_cache:
            return blobs, layers
        for _, record in self._records():
            if record is not None:
                diff_ids, digests = _record_refs(record, "")
                layers.update(map(digest_hex, diff_ids))
                blobs.update(map(digest_hex, [*diff_ids, *digests]))
        return blobs, layers

    def _mark_manifest(self, desc: Descriptor, blobs: set[str], layers: set[str]) -> None:
        """Mark a manifest or index and everything below it."""
        hex_name = digest_hex(desc.digest)
        if hex_name in blobs:
            return
        blobs.add(hex_name)
        if not self.has_blob(desc.digest):
            return  # a dangling ref: nothing below it to keep
        if desc.media_type in INDEX_TYPES:
            index = _marking(lambda: Index.from_bytes(self._read_described(desc)))
            for child in index.manifests:
                self._mark_manifest(child, blobs, layers)
        elif desc.media_type in MANIFEST_TYPES:
            manifest = _marking(lambda: self.manifest(desc))
            blobs.add(digest_hex(manifest.config.digest))
            blobs.update(digest_hex(layer.digest) for layer in manifest.layers)
            if self.has_blob(manifest.config.digest):
                diff_ids = _marking(lambda: self.config(manifest)).diff_ids
                layers.update(map(digest_hex, diff_ids))
                blobs.update(map(digest_hex, diff_ids))

    def _sweep_cache(self, cutoff: float, blobs: set[str] | None = None,
                     layers: set[str] | None = None) -> int:
        """Remove corrupt and dangling records; with marked sets, also records naming
        anything outside them."""
        removed = self._sweep_dir(self._corrupt, cutoff, lambda name: True)
        for path, record in self._records():
            if record is not None:
                diff_ids, digests = _record_refs(record, "")
                if blobs is not None and layers is not None:
                    kept = (all(digest_hex(d) in layers for d in diff_ids)
                            and all(digest_hex(b) in blobs for b in digests))
                else:
                    kept = all(map(self.has_layer, diff_ids)) and all(map(self.has_blob, digests))
                if kept:
                    continue
            removed += _remove_if_old(path, cutoff)
        return removed

    def _sweep_blobs(self, marked: set[str], cutoff: float) -> tuple[int, int]:
        removed = freed = 0
        for entry in os.scandir(self._blobs):
            if entry.name in marked or not is_digest_hex(entry.name):
                continue
            size = entry.stat(follow_symlinks=False).st_size
            if _remove_if_old(Path(entry.path), cutoff):
                removed, freed = removed + 1, freed + size
        return removed, freed

    def _sweep_layers(self, marked: set[str], cutoff: float) -> int:
        """Unreferenced layer dirs and staging dirs; renamed into tmp/ before deletion, so
        a crash mid-delete never leaves a partial tree under a layer's name."""

        def unreferenced(name: str) -> bool:
            if _STAGING.fullmatch(name):
                return True
            return is_digest_hex(name) and name not in marked

        return self._sweep_dir(self._layers, cutoff, unreferenced, remove=self._discard)

    def _sweep_dir(
        self,
        parent: Path,
        cutoff: float,
        wanted: Callable[[str], bool],
        remove: Callable[[Path], None] | None = None,
    ) -> int:
        """Remove the entries of `parent` that `wanted` names and are older than `cutoff`."""
        return sum(
            _remove_if_old(Path(entry.path), cutoff, remove)
            for entry in os.scandir(parent)
            if wanted(entry.name)
        )

    def check(self) -> list[str]:
        """Consistency problems, `[]` when the store is sound. Reads everything; slow.

        Reported: a blob whose content does not match its name; anything `validate_layout`
        finds (index.json, every tagged manifest/config/layer present, sized and hashed
        right, one diff_id per layer); a ref name used twice; a layer dir without its blob
        or without `diff/`; a cache record that does not parse or names a missing layer or
        blob; a compressed-blob record that does not parse or names a missing blob, a blob
        of another size, or a missing layer blob; a remote-blob record that does not parse or
        whose layer or config is not in the store. Not problems: tmp/ entries, layer staging
        dirs, cache/corrupt/, unreferenced blobs (all garbage for `prune`). Holds the store
        lock shared (no prune meanwhile).
        """
        with self.lock(exclusive=False):
            problems, hashed = self._check_blobs()
            problems += validate_layout(self.root, blob_digests=hashed)
            problems += self._check_refs()
            problems += self._check_layers()
            problems += self._check_cache()
            problems += self._check_compressed()
            problems += self._check_remote()
        return problems

    def _check_blobs(self) -> tuple[list[str], dict[str, tuple[str, int]]]:
        problems: list[str] = []
        hashed: dict[str, tuple[str, int]] = {}
        for entry in os.scandir(self._blobs):
            if not is_digest_hex(entry.name) or not entry.is_file(follow_symlinks=False):
                problems.append(f"blobs/sha256/{entry.name}: not a blob name")
                continue
            digest, size = sha256_file(entry.path)
            hashed[entry.name] = (digest, size)
            if digest != PREFIX + entry.name:
                problems.append(f"blob {PREFIX}{entry.name}: content has digest {digest}")
        return problems, hashed

    def _check_refs(self) -> list[str]:
        try:
            names = [d.ref_name for d in self._read_index().manifests if d.ref_name]
        except StoreError:
            return []  # validate_layout reported it
        return [
            f"index.json: ref {n!r} is used more than once"
            for n in sorted(set(names))
            if names.count(n) > 1
        ]

    def _check_layers(self) -> list[str]:
        problems = []
        for entry in os.scandir(self._layers):
            if _STAGING.fullmatch(entry.name):
                continue
            if not is_digest_hex(entry.name):
                problems.append(f"layers/{entry.name}: not a layer name")
            elif not os.path.isdir(os.path.join(entry.path, "diff")):
                problems.append(f"layer {PREFIX}{entry.name}: no diff/ dir")
            elif not self.has_blob(PREFIX + entry.name):
                problems.append(f"layer {PREFIX}{entry.name}: its blob is missing")
        return problems

    def _check_cache(self) -> list[str]:
        problems = []
        for path, record in self._records():
            if not _KEY.fullmatch(path.stem) or path.suffix != ".json":
                problems.append(f"cache/{path.name}: not a cache record name")
            elif record is None:
                problems.append(f"cache record {path.stem}: does not parse")
            else:
                problems += _missing_refs(self, path.stem, record)
        return problems


# --- helpers --------------------------------------------------------------------------------


def _check_prefix(prefix: str) -> str:
    if "/" in prefix or "\0" in prefix:
        raise ValueError(f"temp name prefix {prefix!r} must be a plain name")
    return prefix


def _check_ref_name(name: str) -> None:
    if not isinstance(name, str) or not _REF_NAME.fullmatch(name):
        raise StoreError(
            f"invalid image name {name!r}",
            hint="letters, digits and . _ - : @ + / between them, e.g. app:1.0",
        )


def _check_layers_match(config: ImageConfig, layers: tuple[Descriptor, ...]) -> None:
    if not layers:
        raise InvalidDocument(
            "image",
            "a manifest needs at least one layer (use oci.EMPTY_LAYER for an image without any)",
        )
    if len(config.diff_ids) != len(layers):
        raise InvalidDocument(
            "image", f"{len(layers)} layers but {len(config.diff_ids)} diff_ids in the config"
        )


def _with_ref(manifests: Sequence[Descriptor], entry: Descriptor) -> tuple[Descriptor, ...]:
    """`manifests` with the ref `entry.ref_name` pointing at `entry` (in place if present;
    any duplicates of that ref dropped)."""
    out: list[Descriptor] = []
    placed = False
    for desc in manifests:
        if desc.ref_name != entry.ref_name:
            out.append(desc)
        elif not placed:
            out.append(entry)
            placed = True
    if not placed:
        out.append(entry)
    return tuple(out)


def _marking(read: Callable[[], _T]) -> _T:
    """Run a read for prune's mark phase; a corrupt root stops prune before any delete."""
    try:
        return read()
    except (DigestMismatch, InvalidDocument) as exc:
        raise StoreError(
            f"prune stopped, nothing deleted: {exc}", hint="run `stepbuild check`"
        ) from exc


def _without_ref(desc: Descriptor) -> Descriptor:
    annotations = {k: v for k, v in (desc.annotations or {}).items() if k != ANNOTATION_REF_NAME}
    return replace(desc, annotations=annotations or None)


def _by_prefix(prefix: str, manifests: Sequence[Descriptor]) -> Descriptor | None:
    found = {d.digest: d for d in manifests if digest_hex(d.digest).startswith(prefix)}
    if len(found) > 1:
        raise StoreError(
            f"{prefix!r} matches {len(found)} images",
            hint="give more digits, or the full sha256: digest",
        )
    return _without_ref(next(iter(found.values()))) if found else None


def _record_refs(record: Any, where: str) -> tuple[list[str], list[str]]:
    """The `diff_ids` and `blobs` a cache record names; `InvalidDocument` if malformed."""
    if not isinstance(record, dict):
        raise InvalidDocument(where, "a cache record must be a JSON object")
    refs: list[list[str]] = []
    for field in ("diff_ids", "blobs"):
        values = record.get(field, [])
        if not isinstance(values, list) or not all(map(is_digest, values)):
            raise InvalidDocument(where, f"{field} must be a list of sha256 digests")
        refs.append(values)
    return refs[0], refs[1]


def _compressed_json(diff_id: str, compression: str, blob: Descriptor) -> dict[str, Any]:
    return {"compression": compression, "diff_id": diff_id, **blob.to_json()}


def _compressed_record(data: bytes, diff_id: str, compression: str, where: str) -> Descriptor:
    """The blob descriptor of a compressed-blob record; `InvalidDocument` if it is malformed
    or is not the record of (diff_id, compression)."""
    record = load_json(data, where)
    if not isinstance(record, dict):
        raise InvalidDocument(where, "a compressed-blob record must be a JSON object")
    if record.get("diff_id") != diff_id or record.get("compression") != compression:
        raise InvalidDocument(where, "the record is not the one its name says")
    fields = {k: v for k, v in record.items() if k not in ("diff_id", "compression")}
    return Descriptor.from_json(fields, where)


def parse_remote_record(data: bytes, name: str
                        ) -> tuple[str, list[tuple[Descriptor, tuple[str, ...]]]]:
    """The remote-blob record `remote-blobs/<name>`, `{"id", "blobs": [{mediaType, digest,
    size, "sources"}]}`: its content id (a layer's diff_id or a config's digest) and each
    blob that holds that content, with the `host/repository`s known to have it.
    `InvalidDocument` if anything is malformed, or `name` is not `<hex of the id>.json`."""
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


def _missing_refs(store: Store, key: str, record: dict[str, Any]) -> list[str]:
    diff_ids, blobs = _record_refs(record, key)
    return [
        f"cache record {key}: layer {d} is missing" for d in diff_ids if not store.has_layer(d)
    ] + [f"cache record {key}: blob {b} is missing" for b in blobs if not store.has_blob(b)]


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def _remove_if_old(path: Path, cutoff: float, remove: Callable[[Path], None] | None = None) -> int:
    """Remove `path` if its mtime is before `cutoff`; 1 if removed, else 0."""
    try:
        if path.lstat().st_mtime >= cutoff:
            return 0
        (remove or remove_tree)(path)
    except FileNotFoundError:
        return 0
    return 1
