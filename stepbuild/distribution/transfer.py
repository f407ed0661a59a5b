"""Push and pull images between the store and a registry; login and logout.

**Push** (`push`): the local manifest names uncompressed layers (the store's convention); the
registry gets an OCI manifest with compressed ones. For each layer, in parallel (`jobs`
threads, a progress line each):

1. Choose the blob: the compressed blob the store recorded for (diff_id, compression)
   (`compress.compressed_layer` makes it once per store, deterministically), else a blob the
   target registry is known to hold for that layer (a *remote record*, below: then the layer
   need not be in the store at all), else compress the layer now.
2. `HEAD` it in the target repository: there already, nothing to send ("exists").
3. Else ask for a cross-repository mount from a repository of the same registry that is known
   to hold it ("mounted"; no bytes move).
4. Else upload it ("pushed"); a blob known only remotely whose mount was refused is first
   downloaded (verified) from where it is known to be.

Then the config blob the same way, then the manifest under the tag (skipped when the tag already
names that exact manifest). Pushing the same image twice uploads nothing; pushing it to
another repository of the same registry mounts every blob.

**Pull** (`pull`): the manifest (an index gives the linux/<this machine's architecture> entry),
the config (kept byte for byte: the image keeps its ID), then the layers: downloaded in
parallel (each verified against its digest by the client), decompressed (by magic bytes) and
checked against the config's diff_id in the worker threads, then applied in order
(`apply.apply_layer`: OCI whiteouts → overlay whiteouts, contained), committed
(`store.commit_layer`), and the compressed blob kept with a compressed-blob record, so a later
push of the layer sends the same bytes and never recompresses. A layer the store already has
is not downloaded. The local manifest is rebuilt in the store's form, so pushing an image and
pulling it into another store gives the same local manifest digest there; the image is tagged
with the reference's familiar form (`127.0.0.1:5000/app:1`, `busybox:latest`).

**Remote records** (`store.remote_records`: `<store>/remote-blobs/<hex>.json`, one per layer
diff_id or config digest; store/records.py owns the format): which blob (descriptor) holds
that content in which `host/repository`. Written after every blob pushed, found or pulled; read
to find mount sources. Hints only: a stale record costs a refused mount and an upload, a
corrupt one is ignored (`stepbuild check` reports it, and `prune` removes it and the records
of layers and configs that are gone). The registry cache records layers it knows to be in a
registry without downloading them.

Nothing half-done gets a real name: downloads go to the store's tmp/ and are removed on any
error; layers are committed only after their diff_id checked out; the tag is written last.
`registry` (and so `requests`) is imported only when a registry is really contacted.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from stepbuild.distribution.connection import Connection, system_ca
from stepbuild.distribution.reference import Reference, parse_reference
from stepbuild.errors import (
    BlobNotFound,
    DigestMismatch,
    ImageNotFound,
    InvalidDocument,
    InvalidReference,
    RegistryError,
    StepbuildError,
    UsageError,
)
from stepbuild.oci import documents as oci
from stepbuild.oci.digest import digest_hex, sha256_bytes
from stepbuild.progress import human_size
from stepbuild.store.received import put_received

if TYPE_CHECKING:
    from concurrent.futures import Future

    from stepbuild.distribution.client import Registry

__all__ = [
    "PULL_POLICIES",
    "Connection",
    "PullResult",
    "PushResult",
    "TransferDisplay",
    "base_image",
    "find_local",
    "login",
    "logout",
    "pull",
    "push",
]

PULL_POLICIES = ("missing", "always", "never")
DEFAULT_JOBS = 4  # blobs transferred at once (docker: 3 up, 3 down)
MAX_CONFIG = 16 << 20  # image configs (long histories); archive/load.py has the same limit
MAX_MOUNT_TRIES = 3
# Layer media types we can unpack (foreign, non-distributable and encrypted ones we cannot).
_PULLABLE_LAYERS = oci.LAYER_TYPES - {oci.DOCKER_LAYER_FOREIGN}

_T = TypeVar("_T")
_R = TypeVar("_R")


# =============================================================================================
# connections


# =============================================================================================
# progress: one line per blob


class TransferDisplay:
    """Progress of parallel transfers, one line per blob (keyed by a short digest).

    On a terminal the lines are redrawn in place (at most 10 times a second) and show byte
    counts; otherwise each change of state (`compressing`, `pushed`, `exists`, `mounted from
    …`, `downloaded`, `applied`, …) is printed once, as a line of its own. `events` keeps
    every state change (key, state) for callers and tests. Thread-safe.
    """

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False,
                 tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = (self.stream.isatty() if tty is None else tty) and not quiet
        self.events: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._lines: dict[str, str] = {}
        self._drawn = 0
        self._last_draw = 0.0

    def status(self, key: str, text: str) -> None:
        """A new state for the blob `key` (always shown)."""
        with self._lock:
            self.events.append((key, text))
            if self.quiet:
                return
            if self.tty:
                self._lines[key] = text
                self._draw()
            else:
                self._write(f"{key}: {text}\n")

    def bytes(self, key: str, verb: str, done: int, total: int) -> None:
        """Bytes moved so far (terminal only, throttled)."""
        if not self.tty:
            return
        with self._lock:
            amount = human_size(done) + (f"/{human_size(total)}" if total else "")
            self._lines[key] = f"{verb} {amount}"
            if time.monotonic() - self._last_draw >= 0.1:
                self._draw()

    def message(self, text: str) -> None:
        """A line of its own, below the blob lines (which are then done)."""
        with self._lock:
            if self.quiet:
                return
            if self.tty:
                self._draw()
                self._lines.clear()
                self._drawn = 0
            self._write(text + "\n")

    def _draw(self) -> None:
        up = f"\x1b[{self._drawn}A" if self._drawn else ""
        lines = "".join(f"\r\x1b[2K{key}: {text}\n" for key, text in self._lines.items())
        self._write(up + lines)
        self._drawn = len(self._lines)
        self._last_draw = time.monotonic()

    def _write(self, text: str) -> None:
        with suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()


def _short(digest: str) -> str:
    return digest_hex(digest)[:12]


# =============================================================================================
# remote records: which registry repositories hold a blob


def _sources_on(store: Any, content_id: str, digest: str, host: str) -> list[str]:
    """Repositories of `host` known to hold blob `digest`."""
    return [s.split("/", 1)[1] for desc, sources in store.remote_records.get(content_id)
            if desc.digest == digest for s in sources if s.split("/", 1)[0] == host]


# =============================================================================================
# local names


def find_local(store: Any, name: str) -> oci.Descriptor:
    """The image `name` names in the store: as written (a tag, a digest, a digest prefix),
    else as a normalised reference (`busybox` → `busybox:latest`). `ImageNotFound`."""
    found = store.resolve(name)
    if found is not None:
        return found  # type: ignore[no-any-return]
    for candidate in _local_names(name):
        found = store.resolve(candidate)
        if found is not None:
            return found  # type: ignore[no-any-return]
    raise ImageNotFound(name, hint="stepbuild images lists them")


def _local_names(name: str) -> list[str]:
    try:
        ref = parse_reference(name)
    except InvalidReference:
        return []
    return list(dict.fromkeys(n for n in (ref.familiar(), str(ref)) if n != name))


def local_name(ref: Reference) -> str:
    """The tag a pulled image gets: Docker's familiar form of the reference."""
    return ref.familiar()


# =============================================================================================
# push


@dataclass(frozen=True, slots=True)
class PushResult:
    """What `push` did: the reference (with the manifest's digest), and per blob (layers,
    then the config) its digest and outcome: "exists", "mounted" or "uploaded"."""

    reference: Reference
    digest: str
    size: int
    blobs: tuple[tuple[str, str], ...]
    manifest_uploaded: bool

    def count(self, outcome: str) -> int:
        return sum(1 for _, o in self.blobs if o == outcome)


def push(store: Any, image: str, destination: str | None = None, *, compression: str = "gzip",
         connection: Connection | None = None, display: TransferDisplay | None = None,
         jobs: int = DEFAULT_JOBS) -> PushResult:
    """Push the local image `image` to `destination` (default: `image` read as a reference).

    Raises ImageNotFound, InvalidReference, UsageError (a digest as destination, a bad
    compression), RegistryError (authentication, network, refused), DigestMismatch.
    """
    from stepbuild.layers.compress import check_compression

    ref = parse_reference(destination or image)
    if ref.digest is not None:
        raise UsageError(f"cannot push to {ref}: push to a tag; the digest is the registry's",
                         hint=f"stepbuild push {image} {ref.name}:{ref.tag or 'latest'}")
    check_compression(compression)
    display = display or TransferDisplay(quiet=True)
    connection = connection or Connection()
    with store.lock(exclusive=False):
        local = find_local(store, image)
        if local.media_type in oci.INDEX_TYPES:
            raise UsageError(f"{image} is an image index; only single images can be pushed")
        manifest = store.manifest(local)
        config = store.config(manifest)
        annotations: list[dict[str, str] | None] = (
            [d.annotations for d in manifest.layers]
            if len(manifest.layers) == len(config.diff_ids) else [None] * len(config.diff_ids))
        with connection.open(ref.registry, ref.repository) as registry:
            pusher = _Pusher(store, registry, ref, compression, display)
            layers = _parallel(pusher.layer, list(config.diff_ids), jobs)
            config_outcome = pusher.send(manifest.config.digest, manifest.config, "config")
            remote = oci.Manifest(
                manifest.config,
                tuple(oci.Descriptor(desc.media_type, desc.digest, desc.size, annotations=a)
                      for (desc, _), a in zip(layers, annotations, strict=True)),
                manifest.annotations)
            data = remote.to_bytes()
            digest = sha256_bytes(data)
            tag = ref.tag or "latest"
            current = registry.head_manifest(ref.repository, tag)
            uploaded = current is None or current[0] != digest
            if uploaded:
                registry.put_manifest(ref.repository, tag, data, remote.media_type)
    blobs = (*((d.digest, o) for d, o in layers), (manifest.config.digest, config_outcome))
    result = PushResult(ref.with_digest(digest), digest, len(data), blobs, uploaded)
    display.message(f"pushed {result.reference} ({_summary(result)})")
    return result


def _summary(result: PushResult) -> str:
    parts = [f"{result.count(o)} {o}" for o in ("uploaded", "mounted", "exists")
             if result.count(o)]
    return ", ".join(parts) + ("" if result.manifest_uploaded else ", manifest unchanged")


class _Pusher:
    """The blobs of one push (its methods run in worker threads)."""

    def __init__(self, store: Any, registry: Registry, ref: Reference, compression: str,
                 display: TransferDisplay) -> None:
        self.store, self.registry, self.ref = store, registry, ref
        self.compression, self.display = compression, display

    def layer(self, diff_id: str) -> tuple[oci.Descriptor, str]:
        """Choose the blob of one layer and send it; return (its descriptor, the outcome)."""
        from stepbuild.layers.compress import NONE, compressed_layer, compression_of, media_type

        key, store = _short(diff_id), self.store
        blob: oci.Descriptor | None = None
        if self.compression == NONE:
            blob = store.descriptor(diff_id, media_type(NONE)) if store.has_blob(diff_id) else None
        else:
            blob = store.compressed_records.get(diff_id, self.compression)
        # Blobs of this layer the target registry holds (docker media types made OCI),
        # those with the compression asked for first.
        there = sorted((oci.Descriptor(media_type(c), d.digest, d.size)
                        for d, sources in store.remote_records.get(diff_id)
                        if (c := compression_of(d.media_type)) is not None
                        and any(s.split("/", 1)[0] == self.ref.registry for s in sources)),
                       key=lambda d: compression_of(d.media_type) != self.compression)
        if blob is None and there and compression_of(there[0].media_type) == self.compression:
            blob = there[0]
        if blob is None and store.has_blob(diff_id):
            self.display.status(key, f"compressing ({self.compression})")
            blob = compressed_layer(store, diff_id, self.compression)
        if blob is None and there:
            blob = there[0]  # another compression than asked for, but no download
        if blob is None:
            raise BlobNotFound(diff_id, hint="the layer is neither in the store nor known "
                               f"to be on {self.ref.registry}; pull or rebuild the image")
        return blob, self.send(diff_id, blob, key)

    def send(self, content_id: str, blob: oci.Descriptor, key: str) -> str:
        """HEAD, else mount, else upload `blob` into the target repository."""
        registry, repo, host = self.registry, self.ref.repository, self.ref.registry
        outcome = "exists"
        if registry.has_blob(repo, blob.digest) is not None:
            self.display.status(key, "exists")
        else:
            sources = [s for s in _sources_on(self.store, content_id, blob.digest, host)
                       if s != repo]
            mounted = next((s for s in sources[:MAX_MOUNT_TRIES]
                            if registry.mount_blob(repo, blob.digest, s)), None)
            if mounted is not None:
                outcome = "mounted"
                self.display.status(key, f"mounted from {mounted}")
            else:
                outcome = "uploaded"
                if not self.store.has_blob(blob.digest):
                    self._download(content_id, blob, sources, key)
                registry.put_blob(repo, blob.digest, blob.size, self.store.blob_path(blob.digest),
                                  on_progress=lambda _d, done, total: self.display.bytes(
                                      key, "pushing", done, total))
                self.display.status(key, f"pushed {human_size(blob.size)}")
        self.store.remote_records.add(content_id, blob, host, repo)
        return outcome

    def _download(self, content_id: str, blob: oci.Descriptor, sources: list[str],
                  key: str) -> None:
        """A blob known only remotely (and not mountable): fetch it into the store first."""
        if not sources:
            raise BlobNotFound(blob.digest, hint=f"not in the store and not known to be on "
                               f"{self.ref.registry}")
        tmp = self.store.tmp_file("push-blob-")
        try:
            self.registry.get_blob(sources[0], blob.digest, tmp, size=blob.size,
                                   on_progress=lambda _d, done, total: self.display.bytes(
                                       key, "downloading", done, total))
            self.store.ingest_blob(tmp, blob.digest)
        finally:
            with suppress(FileNotFoundError):
                tmp.unlink()
        self.display.status(key, f"downloaded from {sources[0]}")


# =============================================================================================
# pull


@dataclass(frozen=True, slots=True)
class PullResult:
    """What `pull` did: the reference with the digest the registry gave for it (an index's,
    for a multi-platform image), the image manifest's digest in the registry, the local
    manifest descriptor, the local tag (None when not tagged) and the layers downloaded."""

    reference: Reference
    digest: str
    manifest_digest: str
    local: oci.Descriptor
    name: str | None
    downloaded: int
    present: int = 0
    layers: tuple[str, ...] = field(default=())


def pull(store: Any, reference: str, *, connection: Connection | None = None,
         display: TransferDisplay | None = None, jobs: int = DEFAULT_JOBS,
         tag: bool = True) -> PullResult:
    """Pull `reference` into the store and tag it (with `local_name`) when `tag`.

    Raises InvalidReference, RegistryError (unknown repository or tag, authentication,
    network), ImageNotFound (no image for this platform), InvalidDocument (not an image),
    DigestMismatch, LayerError, StepbuildError (a full disk). The store is left without
    anything half-done.
    """
    ref = parse_reference(reference)
    display = display or TransferDisplay(quiet=True)
    connection = connection or Connection()
    with store.lock(exclusive=False), connection.open(ref.registry, ref.repository) as registry:
        try:
            result = _Puller(store, registry, ref, display, jobs).run()
        except OSError as exc:
            raise StepbuildError(f"pull of {ref} failed: {exc.strerror or exc}"
                                 + (f": {exc.filename}" if exc.filename else "")) from exc
        name = local_name(ref) if tag else None
        if name is not None:
            store.tag(name, result.local)
    result = PullResult(result.reference, result.digest, result.manifest_digest, result.local,
                        name, result.downloaded, result.present, result.layers)
    display.message(f"pulled {result.reference}" + (f" as {name}" if name and name != str(ref)
                                                     else ""))
    return result


class _Puller:
    def __init__(self, store: Any, registry: Registry, ref: Reference,
                 display: TransferDisplay, jobs: int) -> None:
        self.store, self.registry, self.ref = store, registry, ref
        self.repo, self.display, self.jobs = ref.repository, display, jobs

    def run(self) -> PullResult:
        data, media_type, digest = self.registry.get_manifest(self.repo, self.ref.identifier)
        top = digest
        if media_type in oci.INDEX_TYPES:
            child = _platform_entry(oci.Index.from_bytes(data, f"index {digest}"), self.ref)
            data, media_type, digest = self.registry.get_manifest(self.repo, child.digest)
        if media_type not in oci.MANIFEST_TYPES:
            raise InvalidDocument(f"{self.ref}", f"not an image manifest ({media_type})")
        manifest = oci.Manifest.from_bytes(data, f"manifest {digest}")
        if manifest.config.media_type not in oci.CONFIG_TYPES:
            raise InvalidDocument(f"{self.ref}", "not a container image (its config is a "
                                  f"{manifest.config.media_type})")
        config_bytes = self._config(manifest.config)
        config = oci.ImageConfig.from_bytes(config_bytes, f"config {manifest.config.digest}")
        if len(config.diff_ids) != len(manifest.layers):
            raise InvalidDocument(f"config {manifest.config.digest}", f"{len(config.diff_ids)} "
                                  f"diff_ids for {len(manifest.layers)} layers")
        for i, layer in enumerate(manifest.layers):
            if layer.media_type not in _PULLABLE_LAYERS:
                raise InvalidDocument(f"manifest {digest}: layers[{i}]",
                                      f"cannot unpack a layer of media type {layer.media_type}")
        downloaded = self._layers(manifest.layers, config.diff_ids)
        local = self._local_manifest(manifest, config, config_bytes)
        return PullResult(self.ref.with_digest(top) if self.ref.digest is None else self.ref,
                          top, digest, local, None, downloaded,
                          len(config.diff_ids) - downloaded, config.diff_ids)

    def _config(self, desc: oci.Descriptor) -> bytes:
        if desc.size > MAX_CONFIG:
            raise InvalidDocument(f"config {desc.digest}", f"{desc.size} bytes, more than the "
                                  f"{MAX_CONFIG} a config may have")
        if self.store.has_blob(desc.digest):
            with suppress(DigestMismatch):
                data: bytes = self.store.read_blob(desc.digest)
                if len(data) == desc.size:
                    return data
        tmp = self.store.tmp_file("pull-config-")
        try:
            self.registry.get_blob(self.repo, desc.digest, tmp, size=desc.size)
            data = tmp.read_bytes()
            self.store.ingest_blob(tmp, desc.digest)
        finally:
            with suppress(FileNotFoundError):
                tmp.unlink()
        self.store.remote_records.add(desc.digest, desc, self.ref.registry, self.repo)
        return data

    def _layers(self, layers: tuple[oci.Descriptor, ...], diff_ids: tuple[str, ...]) -> int:
        """Fetch (in parallel) and apply (in order) every layer the store lacks."""
        from stepbuild.layers.apply import commit_applied

        store, downloaded = self.store, 0
        jobs = list(zip(layers, diff_ids, strict=True))
        lowers: list[Path] = []
        with _pool(self._fetch, jobs, self.jobs) as results:
            for (blob, diff_id), fetched in zip(jobs, results, strict=True):
                key = _short(diff_id)
                if fetched is not None:
                    compressed, tar, kind = fetched
                    try:
                        commit_applied(store, tar, diff_id, lowers, f"layer {blob.digest}",
                                       "pull-")
                        if kind is not None:
                            self._keep_compressed(compressed, blob, diff_id, kind)
                    finally:
                        for path in (compressed, tar):
                            with suppress(FileNotFoundError):
                                path.unlink()
                    downloaded += 1
                    self.display.status(key, "pulled")
                store.remote_records.add(diff_id, blob, self.ref.registry, self.repo)
                lowers.insert(0, store.layer_dir(diff_id))
        return downloaded

    def _fetch(self, job: tuple[oci.Descriptor, str]) -> tuple[Path, Path, str | None] | None:
        """Download and decompress one layer, checking its diff_id (a worker thread).
        None when the store has the layer already."""
        from stepbuild.layers.decompress import compression_of, decompress_to

        blob, diff_id = job
        key = _short(diff_id)
        if self.store.has_layer(diff_id):
            self.display.status(key, "already present")
            return None
        compressed = self.store.tmp_file("pull-blob-")
        tar = self.store.tmp_file("pull-layer-")
        try:
            self.display.status(key, f"downloading {human_size(blob.size)}")
            self.registry.get_blob(self.repo, blob.digest, compressed, size=blob.size,
                                   on_progress=lambda _d, done, total: self.display.bytes(
                                       key, "downloading", done, total))
            with open(compressed, "rb") as raw:
                head = raw.read(4)
                raw.seek(0)
                actual = decompress_to(raw, tar, f"layer {blob.digest}")
            if actual != diff_id:
                raise DigestMismatch(diff_id, actual)
        except BaseException:
            for path in (compressed, tar):
                with suppress(FileNotFoundError):
                    path.unlink()
            raise
        kind = compression_of(head)
        self.display.status(key, "downloaded")
        return compressed, tar, kind

    def _keep_compressed(self, path: Path, blob: oci.Descriptor, diff_id: str, kind: str) -> None:
        """The downloaded blob stays in the store as the layer's `kind` form: a later push
        sends these very bytes (the registry has them) instead of recompressing."""
        from stepbuild.layers.compress import media_type

        self.store.ingest_blob(path, blob.digest)
        if self.store.compressed_records.get(diff_id, kind) is None:
            self.store.compressed_records.put(diff_id, kind,
                                         oci.Descriptor(media_type(kind), blob.digest, blob.size))

    def _local_manifest(self, manifest: oci.Manifest, config: oci.ImageConfig,
                        config_bytes: bytes) -> oci.Descriptor:
        """The manifest in the store's form: the config as it came, uncompressed layers."""
        store = self.store
        layers = [oci.Descriptor(oci.MEDIA_TYPE_LAYER, d, store.blob_path(d).stat().st_size,
                                 annotations=blob.annotations)
                  for d, blob in zip(config.diff_ids, manifest.layers, strict=True)]
        local = put_received(store, config_bytes, layers, manifest.annotations)
        return replace(local, platform=config.platform)


def _platform_entry(index: oci.Index, ref: Reference) -> oci.Descriptor:
    import platform

    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)
    for child in index.manifests:
        plat = child.platform or {}
        if (plat.get("os"), plat.get("architecture")) == ("linux", arch) and \
                child.media_type in oci.MANIFEST_TYPES:
            return child
    found = sorted(f"{(c.platform or {}).get('os')}/{(c.platform or {}).get('architecture')}"
                   for c in index.manifests)
    raise ImageNotFound(str(ref), hint=f"no linux/{arch} image in the index; it has: "
                        f"{', '.join(found) or 'nothing'}")


# =============================================================================================
# FROM of a registry reference


def base_image(store: Any, name: str, policy: str, *, found: bool,
               display: TransferDisplay | None = None,
               connection: Connection | None = None) -> str | None:
    """The local manifest digest to build FROM `name` on, given the pull policy; None to
    keep what the store resolved `name` to (`found`), or when `name` is no reference.

    - missing: the store's image under `name` (then this is not called) or under its
      normalised name (`busybox` → `busybox:latest`); else pulled.
    - always: pulled (the manifest is fetched again; layers the store has are not).
    - never: the store only; `ImageNotFound` when it lacks the image.

    Raises the errors of `pull`, the message naming the base.
    """
    if policy not in PULL_POLICIES:
        raise UsageError(f"unknown pull policy {policy!r}", hint="use missing, always or never")
    try:
        ref = parse_reference(name)
    except InvalidReference:
        return None
    if policy != "always" and not found:
        for candidate in _local_names(name):
            desc = store.resolve(candidate)
            if desc is not None:
                return str(desc.digest)
    if policy == "never" or (policy == "missing" and found):
        if found:
            return None
        raise StepbuildError(f"base image {name!r} not found in the local store and "
                             "--pull=never forbids pulling it",
                             hint=f"pull it first (stepbuild pull {ref}), or build with "
                                  "--pull=missing")
    try:
        return pull(store, str(ref), connection=connection, display=display).local.digest
    except RegistryError as exc:
        prefix = "" if found else f"base image {name!r} not found in the local store, and "
        raise StepbuildError(f"{prefix}pulling {ref} failed: {exc.message}",
                             hint=exc.hint) from exc
    except StepbuildError as exc:
        raise StepbuildError(f"pulling base image {ref} failed: {exc.message}",
                             hint=exc.hint) from exc


# =============================================================================================
# login / logout


def login(host: str, username: str, password: str, *,
          connection: Connection | None = None) -> Path:
    """Check the credentials against the registry (`GET /v2/` authenticated as it asks),
    then store them in the auth file; return its path. `RegistryError` (nothing stored)
    when the registry refuses them."""
    from stepbuild.distribution.auth import Credentials
    from stepbuild.distribution.auth import login as store_login
    from stepbuild.distribution.client import Registry

    connection = connection or Connection()
    credentials = Credentials(username, password)
    host = _registry_host(host)
    with Registry(host, auth=credentials, tls_verify=connection.tls_verify,
                  ca_file=connection.ca_file or system_ca(host, connection.tls_verify),
                  retries=connection.retries, backoff=connection.backoff) as registry:
        registry.ping()
    return store_login(host, credentials, authfile=connection.authfile)


def logout(host: str, *, authfile: str | None = None) -> Path:
    """Remove the stored credentials of `host`; return the auth file's path. `UsageError`
    when there were none."""
    from stepbuild.distribution.auth import default_auth_file
    from stepbuild.distribution.auth import logout as remove_login

    host = _registry_host(host)
    if not remove_login(host, authfile=authfile):
        raise StepbuildError(f"not logged in to {host}",
                             hint=f"no credentials for it in {default_auth_file(authfile)}")
    return default_auth_file(authfile)


def _registry_host(text: str) -> str:
    """`HOST[:PORT]`, also from `https://HOST/...` (what people paste)."""
    from stepbuild.distribution.auth import normalize_key
    from stepbuild.distribution.reference import DOCKER_HUB, valid_registry_host

    host = normalize_key(text).split("/", 1)[0]
    if not valid_registry_host(host):
        raise InvalidReference(text, "not a registry host ([HOST[:PORT]])")
    return host or DOCKER_HUB


# =============================================================================================
# helpers


@contextmanager
def _pool(func: Callable[[_T], _R], items: list[_T], jobs: int
          ) -> Iterator[Iterator[_R]]:
    """`func` over `items` in up to `jobs` threads; yields the results in order, as each is
    ready. On an error (in a worker, or in the caller's loop) the pending items are
    cancelled and the running ones awaited before it propagates."""
    if not items:
        yield iter(())
        return
    from concurrent.futures import ThreadPoolExecutor  # only when there is something to move

    pool = ThreadPoolExecutor(max(1, min(jobs, len(items))), thread_name_prefix="transfer")
    futures: list[Future[_R]] = [pool.submit(func, item) for item in items]
    taken = 0

    def results() -> Iterator[_R]:
        nonlocal taken
        for future in futures:
            result = future.result()
            taken += 1
            yield result

    try:
        yield results()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for future in futures[taken:]:  # results the caller never took: their temp files
            if not future.cancelled() and future.exception() is None:
                _discard(future.result())


def _discard(result: Any) -> None:
    """Delete the temp files of an unused `_fetch` result (already consumed ones are gone)."""
    for path in result if isinstance(result, tuple) else ():
        if isinstance(path, Path):
            with suppress(FileNotFoundError):
                path.unlink()


def _parallel(func: Callable[[_T], _R], items: list[_T], jobs: int) -> list[_R]:
    with _pool(func, items, jobs) as results:
        return list(results)
