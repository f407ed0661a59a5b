"""Pull an image from a registry into the store; FROM a registry reference (`base_image`).

`pull`: the manifest (an index gives the entry of the platform asked for, by default this
machine's: oci/platform.select), the config
(kept byte for byte: the image keeps its ID), then the layers: downloaded in parallel (each
verified against its digest by the client), decompressed (by magic bytes) and checked against
the config's diff_id in the worker threads, then applied in order (`apply.apply_layer`: OCI
whiteouts → overlay whiteouts, contained), committed (`store.commit_layer`), and the compressed
blob kept with a compressed-blob record, so a later push of the layer sends the same bytes and
never recompresses. A layer the store already has is not downloaded. The local manifest is
rebuilt in the store's form, so pushing an image and pulling it into another store gives the
same local manifest digest there; the image is tagged with the reference's familiar form
(`127.0.0.1:5000/app:1`, `busybox:latest`). Every blob pulled, or found present, gets a remote
record (push.py explains them): a later push to that registry mounts instead of uploading.

Mirrors (the registry rules of connection.py, stepbuild/config/rules.py): the image is pulled
from the first of the rules' endpoints that serves it, mirrors first, the registry last. A
mirror that fails with a registry error (unreachable, TLS, 5xx, 404, refused access) is
skipped with a note (shown with -v); its retries are cut to `MIRROR_RETRIES`. What a mirror
sends is verified as anything else is (digests); a tag it resolves is trusted as its answer,
as Podman does. The image keeps the reference's name in the store; the remote records name
the endpoint it came from, which is what holds the blobs.

Nothing half-done gets a real name: downloads go to the store's tmp/ and are removed on any
error; layers are committed only after their diff_id checked out; the tag is written last.
`registry` (and so `requests`) is imported only when a registry is really contacted.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from stepbuild.distribution.connection import Connection
from stepbuild.distribution.display import TransferDisplay, blob_key
from stepbuild.distribution.local_names import local_name, other_local_names
from stepbuild.distribution.reference import Reference, parse_reference
from stepbuild.distribution.workers import DEFAULT_JOBS, worker_pool
from stepbuild.errors import (
    DigestMismatch,
    ImageNotFound,
    InvalidDocument,
    InvalidReference,
    RegistryError,
    StepbuildError,
    UsageError,
)
from stepbuild.oci import documents as oci
from stepbuild.oci.platform import Platform, select
from stepbuild.progress import human_size
from stepbuild.store.received import put_received

if TYPE_CHECKING:
    from collections.abc import Callable

    from stepbuild.config.rules import Endpoint
    from stepbuild.distribution.client import Registry
    from stepbuild.store.store import Store

T = TypeVar("T")

__all__ = ["PULL_POLICIES", "PullResult", "base_image", "first_serving", "pull"]

PULL_POLICIES = ("missing", "always", "never")
MIRROR_RETRIES = 1  # a mirror that fails twice is skipped: the registry itself is next
MAX_CONFIG = 16 << 20  # image configs (long histories); archive/load.py has the same limit
# Layer media types we can unpack (foreign, non-distributable and encrypted ones we cannot).
_PULLABLE_LAYERS = oci.LAYER_TYPES - {oci.DOCKER_LAYER_FOREIGN}

# A fetched layer: the compressed blob, the tar decompressed from it (both temp files of the
# store) and its compression (None: it came uncompressed).
_Fetched = tuple[Path, Path, str | None]


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
    source: str = ""


def pull(store: Store, reference: str, *, connection: Connection | None = None,
         display: TransferDisplay | None = None, jobs: int = DEFAULT_JOBS,
         tag: bool = True, platform: Platform | None = None) -> PullResult:
    """Pull `reference` into the store and tag it (with `local_name`) when `tag`. From an
    index, the image of `platform` (None: this machine's).

    Raises InvalidReference, RegistryError (unknown repository or tag, authentication,
    network), ImageNotFound (no image for this platform), InvalidDocument (not an image),
    DigestMismatch, LayerError, StepbuildError (a full disk). The store is left without
    anything half-done.
    """
    ref = parse_reference(reference)
    display = display or TransferDisplay(quiet=True)
    connection = connection or Connection()
    endpoints = connection.pull_endpoints(ref.registry, ref.repository,
                                          by_digest=ref.digest is not None)
    with store.lock(exclusive=False):
        result = _from_endpoints(store, ref, endpoints, connection, display, jobs,
                                 platform or Platform.host())
        name = local_name(ref) if tag else None
        if name is not None:
            store.tag(name, result.local)
    result = replace(result, name=name)
    origin = f"{ref.registry}/{ref.repository}"
    display.message(f"pulled {result.reference}"
                    + (f" as {name}" if name and name != str(ref) else "")
                    + (f" from {result.source}" if result.source != origin else ""))
    return result


def _from_endpoints(store: Store, ref: Reference, endpoints: list[Endpoint],
                    connection: Connection, display: TransferDisplay, jobs: int,
                    platform: Platform) -> PullResult:
    """Pull from the first endpoint that serves `ref` (see the module docstring)."""

    def attempt(registry: Registry, endpoint: Endpoint) -> PullResult:
        try:
            result = _Puller(store, registry, ref, endpoint.repository, display, jobs,
                             platform).run()
        except OSError as exc:
            raise StepbuildError(f"pull of {ref} failed: {exc.strerror or exc}"
                                 + (f": {exc.filename}" if exc.filename else "")) from exc
        return replace(result, source=f"{endpoint.host}/{endpoint.repository}")

    return first_serving(endpoints, connection, display, attempt)


def first_serving(endpoints: list[Endpoint], connection: Connection,
                  display: TransferDisplay, attempt: Callable[[Registry, Endpoint], T]) -> T:
    """`attempt` on each endpoint in turn (mirrors first, each retried `MIRROR_RETRIES`
    times), until one does not raise a RegistryError; a mirror that fails is skipped with a
    note. The last endpoint's error is raised, with the mirrors' failures in its message."""
    skipped: list[str] = []
    for endpoint in endpoints:
        source = f"{endpoint.host}/{endpoint.repository}"
        with connection.open_endpoint(
                endpoint, retries=MIRROR_RETRIES if endpoint.mirror else None) as registry:
            try:
                return attempt(registry, endpoint)
            except RegistryError as exc:
                if endpoint is endpoints[-1]:
                    if not skipped:
                        raise
                    raise RegistryError(exc.status, exc.codes, f"{exc.message} (mirrors tried"
                                        f" first: {'; '.join(skipped)})", exc.temporary,
                                        hint=exc.hint) from exc
                skipped.append(f"{source}: {exc.message}")
                display.note(f"mirror {source} skipped: {exc.message}")
    raise AssertionError("unreachable: the registry itself is the last endpoint")


class _Puller:
    """One pull of `ref` from `registry`, where the image is `repo` (a mirror's path may
    differ from the reference's)."""

    def __init__(self, store: Store, registry: Registry, ref: Reference, repo: str,
                 display: TransferDisplay, jobs: int, platform: Platform) -> None:
        self.store, self.registry, self.ref = store, registry, ref
        self.repo, self.display, self.jobs = repo, display, jobs
        self.platform = platform

    def run(self) -> PullResult:
        data, media_type, digest = self.registry.get_manifest(self.repo, self.ref.identifier)
        top = digest
        if media_type in oci.INDEX_TYPES:
            child = _platform_entry(oci.Index.from_bytes(data, f"index {digest}"), self.ref,
                                    self.platform)
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
        self.store.remote_records.add(desc.digest, desc, self.registry.host, self.repo)
        return data

    def _layers(self, layers: tuple[oci.Descriptor, ...], diff_ids: tuple[str, ...]) -> int:
        """Fetch (in parallel) and apply (in order) every layer the store lacks."""
        from stepbuild.layers.apply import commit_applied

        store, downloaded = self.store, 0
        jobs = list(zip(layers, diff_ids, strict=True))
        lowers: list[Path] = []
        with worker_pool(self._fetch, jobs, self.jobs, unused=_discard) as results:
            for (blob, diff_id), fetched in zip(jobs, results, strict=True):
                key = blob_key(diff_id)
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
                store.remote_records.add(diff_id, blob, self.registry.host, self.repo)
                lowers.insert(0, store.layer_dir(diff_id))
        return downloaded

    def _fetch(self, job: tuple[oci.Descriptor, str]) -> _Fetched | None:
        """Download and decompress one layer, checking its diff_id (a worker thread).
        None when the store has the layer already."""
        from stepbuild.layers.decompress import compression_of, decompress_to

        blob, diff_id = job
        key = blob_key(diff_id)
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


def _platform_entry(index: oci.Index, ref: Reference, wanted: Platform) -> oci.Descriptor:
    """The index's image manifest of platform `wanted` (its normal form: oci/platform.py)."""
    images = [c for c in index.manifests if c.media_type in oci.MANIFEST_TYPES]
    child = select(images, wanted)
    if child is not None:
        return child  # type: ignore[no-any-return]
    found = sorted(str(Platform.from_oci(c.platform)) for c in images if c.platform)
    raise ImageNotFound(str(ref), hint=f"no {wanted} image in the index; it has: "
                        f"{', '.join(found) or 'nothing'}")


def base_image(store: Store, name: str, policy: str, *, found: bool,
               display: TransferDisplay | None = None,
               connection: Connection | None = None,
               platform: Platform | None = None) -> str | None:
    """The local manifest digest to build FROM `name` on, given the pull policy; None to
    keep what the store resolved `name` to (`found`: an image of `platform`), or when
    `name` is no reference. `platform`: the one to build on (None: this machine's); an
    image pulled for another platform than this machine's is not tagged, so that the
    name keeps meaning this machine's image (a later build for that platform asks the
    registry again; the layers are not downloaded twice).

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
    wanted = platform or Platform.host()
    if policy != "always" and not found:
        for candidate in other_local_names(name):
            desc = store.resolve(candidate)
            digest = _local_of(store, desc, wanted) if desc is not None else None
            if digest is not None:
                return digest
    if policy == "never" or (policy == "missing" and found):
        if found:
            return None
        raise StepbuildError(f"base image {name!r} not found in the local store and "
                             "--pull=never forbids pulling it",
                             hint=f"pull it first (stepbuild pull {ref}), or build with "
                                  "--pull=missing")
    try:
        return pull(store, str(ref), connection=connection, display=display,
                    tag=wanted == Platform.host(), platform=wanted).local.digest
    except RegistryError as exc:
        prefix = "" if found else f"base image {name!r} not found in the local store, and "
        raise StepbuildError(f"{prefix}pulling {ref} failed: {exc.message}",
                             hint=exc.hint) from exc
    except StepbuildError as exc:
        raise StepbuildError(f"pulling base image {ref} failed: {exc.message}",
                             hint=exc.hint) from exc


def _local_of(store: Store, desc: oci.Descriptor, wanted: Platform) -> str | None:
    """The manifest digest of the `wanted` image of a local image (an index's entry, or
    the image itself when it is of that platform); None if it has none."""
    if desc.media_type in oci.INDEX_TYPES:
        entry = select(store.index(desc).manifests, wanted)
        return str(entry.digest) if entry is not None else None
    config = store.config(store.manifest(desc))
    return str(desc.digest) if Platform.from_oci(config.platform) == wanted else None


def _discard(fetched: _Fetched | None) -> None:
    """Delete the temp files of a fetched layer that was never applied (an error stopped the
    pull first)."""
    for path in fetched[:2] if fetched is not None else ():
        with suppress(FileNotFoundError):
            path.unlink()
