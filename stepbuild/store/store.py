"""The local store: content-addressed blobs, unpacked layer dirs, tags; the lock and tmp/.

The store root is itself an OCI image layout (image-layout.md), so `skopeo copy oci:<root>:app`
and `umoci` read it as it is; the rest is ours and those tools ignore it. layout.py names
every folder under the root; this module owns these:

    oci-layout                  {"imageLayoutVersion":"1.0.0"}
    index.json                  tagged manifests; a tag is an org.opencontainers.image.ref.name
    blobs/sha256/<hex>          blobs, named by digest (configs, manifests, layer tars)
    layers/<hex>/diff/          a layer unpacked (an overlay lower dir); <hex> of its diff_id
    tmp/                        every write starts here (same filesystem), then rename(2)s
    lock, index.lock            flock(2) files: the store lock and the index.json lock

Records (cache, compressed-blob, remote-blob, import) are records.py's, reached through the
store (`store.cache_records`...); garbage collection and the consistency check are gc.py's.
Owns paths, atomicity, durability and locking. It does not build tars, unpack layers or
decide what a record means beyond the content it names.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path

from stepbuild.errors import (
    BlobNotFound,
    DigestMismatch,
    InvalidDocument,
    StoreError,
)
from stepbuild.fs.durable import fsync_dir, write_file
from stepbuild.fs.locks import flocked
from stepbuild.fs.owner import owner_tag
from stepbuild.fs.trees import remove_tree
from stepbuild.fs.userns import overlay_xattr_namespace
from stepbuild.oci.digest import (
    PREFIX,
    Digest,
    digest_hex,
    is_digest,
    sha256_bytes,
    sha256_file,
)
from stepbuild.oci.documents import (
    ANNOTATION_REF_NAME,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    layout_header,
)
from stepbuild.store.layout import StoreLayout
from stepbuild.store.records import (
    CacheRecords,
    CompressedRecords,
    ImportRecords,
    PushRecords,
    RemoteRecords,
)
from stepbuild.store.stale import clear_dead_work

GRACE_PERIOD = 3600.0  # seconds: prune never deletes anything younger
MAX_MANIFEST_SIZE = 4 << 20  # what registries accept; a bigger blob is not a manifest

STAGING_NAME = re.compile(r"[0-9a-f]{64}\.tmp-.+")  # a layer dir being committed
_NOT_OWN_SYMLINK = "is a symlink, not the store's own directory"
_HEX_PREFIX = re.compile(r"[0-9a-f]{12,64}")
# image-layout.md, "ref.name": component ("/" component)*, separators -._:@+ and "--".
_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")


class Store:
    """A content-addressed store of blobs, layer dirs and tags, with its records
    (`cache_records`, `compressed_records`, `remote_records`, `import_records`,
    `push_records`: records.py).

    Glossary: a *digest* (`sha256:<hex>`) names a blob by its bytes; a *diff_id* is the
    digest of an uncompressed layer tar and names the unpacked layer dir; a *key* is a
    step's cache key (32 hex digits of xxh3-128); a *ref* is a name in index.json (a tag).

    Lifecycle of one step (the builder's order; each arrow is durable before the next):

        upper = store.tmp_dir("upper-")           # the step's overlay upperdir
        tar = store.tmp_file("layer-")            # layer.py writes the tar, hashing it
        path = store.commit_layer(upper, diff_id, tar)   # blob first, then the dir
        store.cache_records.put(key, CacheRecord((diff_id,), ...))  # after the layer
        ...
        desc = store.put_image(config, layers)    # config + manifest blobs
        store.tag("app:1.0", desc)                # index.json, last

    Contracts that hold for every method:
    - Atomic: each final name (blob, layer dir, cache record, index.json) appears complete
      or not at all. Everything is written under tmp/ (or a staging name beside the final
      one), fsynced, renamed into place, and the directory fsynced (docs/security.md rule 5). A
      crash leaves only garbage in tmp/ (or `layers/<hex>.tmp-*`); `gc.check` stays clean,
      the next `lock` removes it once its owner is dead (the owner tag in its name:
      stale.py), and `gc.prune` whatever is older than the grace period.
    - Idempotent: putting content that is already there succeeds and changes nothing
      (it refreshes the mtime, so a concurrent prune's grace period covers it).
    - Verified: `read_blob` and `ingest_blob` hash what they read; digests are validated
      before they become paths (`InvalidDigest`).
    - References after content: `put_image`, `tag` and the records' `put` refuse to name
      blobs or layers that are not in the store (`BlobNotFound`).
    - Errors are `StoreError` subclasses; OSError from the filesystem passes through.

    Concurrency: any number of processes may use one store. Writers of the same content
    race benignly (the first rename wins; the others discard theirs). index.json is
    read-modify-written under an exclusive flock on `index.lock`. Every mutating method
    holds the store `lock` shared for its duration; `gc.prune` holds it exclusive, so it
    never runs in the middle of a write. Across calls (commit_layer ... a record) content
    is protected by the grace period; a build that wants more holds `lock(exclusive=False)`
    from start to end, and prune then waits for it.
    """

    def __init__(self, root: Path, *, grace_period: float = GRACE_PERIOD,
                 on_resolve: Callable[[str], None] | None = None,
                 clear_dead: bool = True) -> None:
        """Open the store at `root`, creating whatever part of the layout is missing.

        Directories are created 0700. Safe to run concurrently: `oci-layout` and
        `index.json` are created with link(2), which never replaces an existing file.
        `grace_period` (seconds) is how old garbage must be before `gc.prune` deletes it.
        `on_resolve` is told every name `resolve` is asked (the no-op fingerprint of a
        build wants the tags the build read: cli/noop.py). `clear_dead`: the first `lock`
        removes the work dead builders left (stale.py); `stepbuild check` says False, to
        list it instead.
        """
        self.root = Path(root)
        self.layout = StoreLayout(self.root)
        self.grace_period = grace_period
        self._on_resolve = on_resolve
        self._blobs = self.layout.blobs
        self._layers = self.layout.layers
        self._tmp = self.layout.tmp
        self._index = self.layout.index
        self._held = threading.local()
        self._clear_dead = clear_dead
        self._create_layout()
        self.cache_records = CacheRecords(self)
        self.compressed_records = CompressedRecords(self)
        self.remote_records = RemoteRecords(self)
        self.import_records = ImportRecords(self)
        self.push_records = PushRecords(self)

    def _create_layout(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        layout = self.layout
        check_owned(self.root, follow=True)  # an admin may symlink the root elsewhere
        for path in layout.top_dirs():
            with suppress(FileNotFoundError):  # made when first needed
                check_owned(path)
        for path in (layout.blobs.parent, layout.blobs, layout.layers, layout.cache,
                     layout.corrupt, layout.tmp):
            path.mkdir(mode=0o700, exist_ok=True)
        # Only a new store gets its oci-layout here (it is written before index.json): an
        # existing store without it is damaged, for `check` to report and `--repair` to fix.
        if not layout.index.exists():
            self.write_oci_layout()
        self._create_if_absent(layout.index, Index().to_bytes())

    def require_overlay_form(self) -> None:
        """Refuse (StoreError, one line) a store whose layer dirs keep overlay's state in the
        other xattr namespace than this process does (fs/userns.overlay_xattr_namespace):
        root's `trusted.overlay.opaque` is invisible to an overlay mounted with `userxattr`
        in a user namespace, and the other way round, so a build would see removed
        directories come back. The first command that writes layers records the store's
        form in `overlay-xattrs`; a store from before that record holds root's."""
        wanted = overlay_xattr_namespace()
        path = self.layout.overlay_xattrs
        if not path.exists():
            legacy = any(self._layers.iterdir())  # made before the record: as root
            self._create_if_absent(path, b"trusted\n" if legacy else wanted.encode() + b"\n")
        have = path.read_text(encoding="ascii", errors="replace").strip()
        if have != wanted:
            raise StoreError(
                f"the store {self.root} keeps its layers for {_FORMS.get(have, repr(have))},"
                f" and this command runs {_FORMS[wanted]}: its overlay would not read them",
                hint="give each its own store (--root or STEPBUILD_ROOT)")

    def write_oci_layout(self) -> None:
        """Create `oci-layout` if it is missing (never replacing one)."""
        self._create_if_absent(self.layout.oci_layout, layout_header())

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
        return Path(tempfile.mkdtemp(prefix=_owned(prefix), dir=self._tmp))

    def tmp_file(self, prefix: str) -> Path:
        """A new, empty, uniquely named file under tmp/ (0600), for `ingest_blob` or
        `commit_layer` to consume. Same cleanup rules as `tmp_dir`."""
        fd, name = tempfile.mkstemp(prefix=_owned(prefix), dir=self._tmp)
        os.close(fd)
        return Path(name)

    def _write_temp(self, prefix: str, data: bytes) -> Path:
        """A durable (fsynced) temp file holding `data`."""
        fd, name = tempfile.mkstemp(prefix=_owned(prefix), dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            _unlink(Path(name))
            raise
        return Path(name)

    def write_file(self, final: Path, data: bytes) -> None:
        """Atomically and durably (re)write the file `final` under the root (mode 0600): a
        temp file in tmp/ → fsync → rename → fsync(dir)."""
        write_file(final, data, 0o600, tmp_dir=self._tmp)

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
        with flocked(self.layout.lock, exclusive=exclusive):
            self._held.mode = "ex" if exclusive else "sh"
            if self._clear_dead:  # once per Store: a killed builder's tmp/ can be 100 MB
                self._clear_dead = False
                clear_dead_work(self.layout)
            try:
                yield
            finally:
                self._held.mode = None

    @contextmanager
    def index_lock(self) -> Iterator[None]:
        """Exclusive flock on `index.lock` around a read-modify-write of index.json.

        A separate file from `lock`, so that a process holding the store lock shared (a
        build) can still update tags.
        """
        with flocked(self.layout.index_lock, exclusive=True):
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
        """`layers/<hex>/diff` for a diff_id; it may not exist (see `has_layer`).

        Where it exists it is the store's own: `layers/<hex>` a real dir of the store's
        owner and `diff` a real dir, neither a symlink — else `StoreError` naming the layer
        (a symlink to a host dir must never become an overlay lower, nor be exported or
        copied from). `diff`'s own owner and mode are the image root's (a step may chown /).
        """
        top = self._layers / digest_hex(diff_id)
        try:
            check_owned(top, what=f"layer {diff_id}")
            mode = (top / "diff").lstat().st_mode
            if not stat.S_ISDIR(mode):
                raise _not_own(top / "diff", f"layer {diff_id}", _NOT_OWN_SYMLINK
                               if stat.S_ISLNK(mode) else "is not a directory")
        except FileNotFoundError:
            pass  # not committed (or no diff/: `check` reports it)
        except StoreError as exc:
            exc.hint = "run `stepbuild check --repair`, which restores it from its blob"
            raise
        return top / "diff"

    def has_layer(self, diff_id: str) -> bool:
        """True if the layer dir is committed *and* its blob is present (usable).
        `StoreError` if the layer dir is not the store's own (see `layer_dir`)."""
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
        final = self.layer_dir(diff_id).parent  # refuses a layer dir not the store's own
        with self.lock(exclusive=False):
            if not final.is_dir():
                self._rename_layer(Path(upper), final)
            else:
                self.discard(Path(upper))
            os.utime(final)
        fsync_dir(self._layers)
        return final / "diff"

    def replace_layer(self, diff_id: str, new: Path) -> Path:
        """Put the dir `new` (under tmp/, its content verified by the caller) in place of
        layer `diff_id`'s dir, whatever is there (moved into tmp/ first, never followed).
        For `check --repair`, which holds the lock exclusively: no build sees the gap."""
        final = self._layers / digest_hex(diff_id)
        with self.lock(exclusive=False):
            self.discard(final)
            self._rename_layer(new, final)
        fsync_dir(self._layers)
        return final / "diff"

    def _rename_layer(self, upper: Path, final: Path) -> None:
        staging = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-{owner_tag()}-",
                                        dir=self._layers))
        os.rename(upper, staging / "diff")
        try:
            os.rename(staging, final)
        except OSError as exc:  # rename(2) onto a non-empty dir: someone was faster
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            self.discard(staging)

    def discard(self, path: Path) -> None:
        """Delete a tree under the root: first rename it into tmp/ (atomic), then remove it
        there, so a crash never leaves a partial tree under its name."""
        trash = Path(tempfile.mkdtemp(prefix=_owned("discard-"), dir=self._tmp))
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
                self.require_blob(layer)
            config_digest, config_size = self.put_blob(config.to_bytes())
            manifest = Manifest(
                Descriptor(MEDIA_TYPE_CONFIG, config_digest, config_size),
                layers,
                annotations or None,
            )
            digest, size = self.put_blob(manifest.to_bytes())
        return Descriptor(MEDIA_TYPE_MANIFEST, digest, size, platform=config.platform)

    def put_index(self, manifests: Sequence[Descriptor],
                  annotations: dict[str, str] | None = None) -> Descriptor:
        """Write an image index of `manifests` (one per platform, each with its `platform`:
        `put_image` gives them so); return its descriptor (untagged, to `tag` like a
        manifest). Every manifest must be in the store (`BlobNotFound`); a manifest without
        a platform, or two of one platform, is `InvalidDocument`. Idempotent."""
        from stepbuild.oci.platform import Platform

        seen: set[Platform] = set()
        for entry in manifests:
            if entry.media_type not in MANIFEST_TYPES or not entry.platform:
                raise InvalidDocument(f"index entry {entry.digest}",
                                      "an image index holds image manifests with a platform")
            platform = Platform.from_oci(entry.platform)
            if platform in seen:
                raise InvalidDocument(f"index entry {entry.digest}", f"a second {platform}")
            seen.add(platform)
        index = Index(tuple(replace(m, annotations=None) for m in manifests),
                      annotations or None)
        with self.lock(exclusive=False):
            for entry in manifests:
                self.require_blob(entry)
            digest, size = self.put_blob(index.to_bytes())
        return Descriptor(MEDIA_TYPE_INDEX, digest, size)

    def require_blob(self, desc: Descriptor) -> None:
        """The blob `desc` names is in the store with its size: else `BlobNotFound` or
        `DigestMismatch` (content not read)."""
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
        with self.lock(exclusive=False), self.index_lock():
            self.blob_path(manifest.digest)
            index = self.read_index()
            manifests = _with_ref(index.manifests, entry)
            if manifests == tuple(index.manifests):
                return  # already so (a no-op rebuild): no rewrite, no fsync
            self._write_index(replace(index, manifests=manifests))

    def untag(self, name: str) -> bool:
        """Remove the ref `name`; True if it existed. Blobs stay (until `prune`)."""
        with self.lock(exclusive=False), self.index_lock():
            index = self.read_index()
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
        if self._on_resolve is not None:
            self._on_resolve(name)
        manifests = self.read_index().manifests
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
            (d.ref_name, _without_ref(d)) for d in self.read_index().manifests if d.ref_name
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

    def index(self, desc: Descriptor) -> Index:
        """Read, verify and parse an image index (same errors as `manifest`)."""
        return Index.from_bytes(self._read_described(desc), f"index {desc.digest}")

    def read_index(self) -> Index:
        """The store's index.json (every ref and untagged entry); `StoreError` if missing."""
        try:
            data = self._index.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{self._index} is missing", hint="run `stepbuild check`") from None
        return Index.from_bytes(data, str(self._index))

    def _write_index(self, index: Index) -> None:
        self.write_file(self._index, index.to_bytes())

# --- helpers --------------------------------------------------------------------------------


_FORMS = {"trusted": "root with CAP_SYS_ADMIN (trusted.overlay.* xattrs)",
          "user": "a user namespace or chroot isolation (user.overlay.* xattrs)"}


def check_owned(path: Path, *, follow: bool = False, what: str = "") -> None:
    """`path` is a directory of the store's owner (this process's user) that nobody else may
    write to, and not a symlink unless `follow`: else `StoreError` with the fix.

    Whoever can write to a store dir can change what every later build copies and runs, so
    a store shared with others, or reached through a link, is refused rather than used.
    """
    label = f"{what}: " if what else ""
    st = path.stat() if follow else path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise _not_own(path, what, _NOT_OWN_SYMLINK)
    if not stat.S_ISDIR(st.st_mode):
        raise _not_own(path, what, "is not a directory")
    if st.st_uid != os.geteuid():
        raise StoreError(f"{label}{path} is owned by uid {st.st_uid}, not by this user"
                         f" ({os.geteuid()})",
                         hint=f"chown {os.geteuid()} {path} if the store is this user's;"
                              " else give --root a store of your own")
    if st.st_mode & 0o022:
        raise StoreError(f"{label}{path} is writable by group or others (mode"
                         f" {stat.S_IMODE(st.st_mode):04o})", hint=f"chmod go-w {path}")


def _not_own(path: Path, what: str, problem: str) -> StoreError:
    label = f"{what}: " if what else ""
    return StoreError(f"{label}{path} {problem}",
                      hint=f"move {path} away; the store never follows it")


def _owned(prefix: str) -> str:
    """A temp name prefix with this process's owner tag (fs/owner.py), so that whatever a
    killed builder leaves is known to be garbage as soon as it is dead."""
    if "/" in prefix or "\0" in prefix:
        raise ValueError(f"temp name prefix {prefix!r} must be a plain name")
    return f"{prefix}{owner_tag()}-"


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


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)

