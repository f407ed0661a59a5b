"""Push a store image to a registry.

The local manifest names uncompressed layers (the store's convention); the registry gets an
OCI manifest with compressed ones. For each layer, in parallel (`jobs` threads, a progress
line each):

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
names that exact manifest), and a push record (`store.push_records`: the registry digest the
local image was pushed as, for `stepbuild images --digests`). Pushing the same image twice
uploads nothing; pushing it to another repository of the same registry mounts every blob.

**Remote records** (`store.remote_records`: `<store>/remote-blobs/<hex>.json`, one per layer
diff_id or config digest; store/records.py owns the format): which blob (descriptor) holds
that content in which `host/repository`. Written after every blob pushed, found or pulled
(here and in pull.py); read here to find mount sources. Hints only: a stale record costs a
refused mount and an upload, a corrupt one is ignored (`stepbuild check` reports it, and
`prune` removes it and the records of layers and configs that are gone). The registry cache
records layers it knows to be in a registry without downloading them, and sends its blobs
with `BlobPusher`.

An image index (several platforms) goes as registries want it: each platform's image as
above, its manifest put by digest, one platform after the other (a layer they share is sent
once; the next finds it there), then the index of those manifests under the tag. The index's
digest is the one printed and recorded; `--platform` pushes one platform's image alone.

`registry` (and so `requests`) is imported only when a registry is really contacted.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from stepbuild.distribution.connection import Connection
from stepbuild.distribution.display import TransferDisplay, blob_key
from stepbuild.distribution.local_names import find_local
from stepbuild.distribution.reference import Reference, parse_reference
from stepbuild.distribution.workers import DEFAULT_JOBS, in_order
from stepbuild.errors import BlobNotFound, ImageNotFound, UsageError
from stepbuild.oci import documents as oci
from stepbuild.oci.digest import is_digest, sha256_bytes
from stepbuild.progress import human_size
from stepbuild.store.images import entry_for, is_index, resolve_image

if TYPE_CHECKING:
    from stepbuild.distribution.client import Registry
    from stepbuild.oci.platform import Platform
    from stepbuild.store.store import Store

__all__ = ["BlobPusher", "PushResult", "push"]

MAX_MOUNT_TRIES = 3


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


def push(store: Store, image: str, destination: str | None = None, *, compression: str = "gzip",
         connection: Connection | None = None, display: TransferDisplay | None = None,
         jobs: int = DEFAULT_JOBS, platform: Platform | None = None) -> PushResult:
    """Push the local image `image` to `destination` (default: `image` read as a reference).

    An image index goes whole (`_IndexPush`), unless `platform` picks one of its images;
    `platform` with a single image must be its platform (store/images.entry_for).

    Raises ImageNotFound, PlatformNotFound, InvalidReference, UsageError (a digest as
    destination, a bad compression), RegistryError (authentication, network, refused),
    DigestMismatch.
    """
    from stepbuild.layers.compress import check_compression

    ref = parse_reference(destination or image)
    if ref.digest is not None:
        raise UsageError(f"cannot push to {ref}: push to a tag; the digest is the registry's",
                         hint=f"stepbuild push {image} {ref.name}:{ref.tag or 'latest'}")
    check_compression(compression)
    display = display or TransferDisplay(quiet=True)
    connection = connection or Connection()
    tag = ref.tag or "latest"
    with store.lock(exclusive=False):
        found = _find(store, image)
        local = found if is_index(found) and platform is None else entry_for(
            store, found, image, platform)
        with connection.open(ref.registry, ref.repository) as registry:
            pusher = BlobPusher(store, registry, ref, compression, display)
            if is_index(local):
                sent = _push_index(store, pusher, local, jobs)
            else:
                sent = _push_image(store, pusher, local, jobs)
            uploaded = _put_manifest(registry, ref.repository, tag, sent.data, sent.media_type)
    digest = sha256_bytes(sent.data)
    store.push_records.add(local.digest, f"{ref.registry}/{ref.repository}:{tag}", digest)
    result = PushResult(ref.with_digest(digest), digest, len(sent.data), sent.blobs, uploaded)
    display.pushed(f"{ref.registry}/{ref.repository}:{tag}", digest)
    display.message(f"pushed {result.reference} ({_summary(result)})")
    return result


def _find(store: Store, image: str) -> oci.Descriptor:
    """`find_local`, and also an untagged image index by its digest (store/images.py)."""
    try:
        return find_local(store, image)
    except ImageNotFound:
        if not is_digest(image):
            raise
        return resolve_image(store, image)


@dataclass(frozen=True, slots=True)
class _Sent:
    """A manifest or index whose blobs (and, for an index, manifests) are in the registry:
    its bytes as the registry gets them, and each blob's outcome."""

    data: bytes
    media_type: str
    blobs: tuple[tuple[str, str], ...]


def _push_image(store: Store, pusher: BlobPusher, local: oci.Descriptor, jobs: int) -> _Sent:
    """Send the layers (in parallel) and config of one image; return its remote manifest
    (compressed layers; the local one names uncompressed ones), not yet put."""
    manifest = store.manifest(local)
    config = store.config(manifest)
    annotations: list[dict[str, str] | None] = (
        [d.annotations for d in manifest.layers]
        if len(manifest.layers) == len(config.diff_ids) else [None] * len(config.diff_ids))
    layers = in_order(pusher.layer, list(config.diff_ids), jobs)
    config_outcome = pusher.send(manifest.config.digest, manifest.config, "config")
    remote = oci.Manifest(
        manifest.config,
        tuple(oci.Descriptor(desc.media_type, desc.digest, desc.size, annotations=a)
              for (desc, _), a in zip(layers, annotations, strict=True)),
        manifest.annotations)
    blobs = (*((d.digest, o) for d, o in layers), (manifest.config.digest, config_outcome))
    return _Sent(remote.to_bytes(), remote.media_type, blobs)


def _push_index(store: Store, pusher: BlobPusher, local: oci.Descriptor, jobs: int) -> _Sent:
    """Each platform's image, then its manifest by digest (a registry accepts an index only
    when every manifest it names is there), then the index of the remote manifests (platforms
    and order kept). Platforms go one after the other, so a layer they share is uploaded
    once and found ("exists") by the next."""
    index = store.index(local)
    entries: list[oci.Descriptor] = []
    blobs: list[tuple[str, str]] = []
    for entry in index.manifests:
        sent = _push_image(store, pusher, entry, jobs)
        digest = sha256_bytes(sent.data)
        _put_manifest(pusher.registry, pusher.ref.repository, digest, sent.data,
                      sent.media_type)
        entries.append(replace(entry, media_type=sent.media_type, digest=digest,
                               size=len(sent.data)))
        blobs += sent.blobs
    remote = replace(index, manifests=tuple(entries))
    return _Sent(remote.to_bytes(), remote.media_type, tuple(blobs))


def _put_manifest(registry: Registry, repo: str, reference: str, data: bytes,
                  media_type: str) -> bool:
    """Put a manifest or index under a tag or its digest, unless it is there already;
    True if it was sent."""
    current = registry.head_manifest(repo, reference)
    if current is not None and current[0] == sha256_bytes(data):
        return False
    registry.put_manifest(repo, reference, data, media_type)
    return True


def _summary(result: PushResult) -> str:
    parts = [f"{result.count(o)} {o}" for o in ("uploaded", "mounted", "exists")
             if result.count(o)]
    return ", ".join(parts) + ("" if result.manifest_uploaded else ", manifest unchanged")


class BlobPusher:
    """The blobs of one push (its methods run in worker threads). The registry cache sends
    its layer blobs with `send` too, so they are mounted when they can be, and recorded."""

    def __init__(self, store: Store, registry: Registry, ref: Reference, compression: str,
                 display: TransferDisplay) -> None:
        self.store, self.registry, self.ref = store, registry, ref
        self.compression, self.display = compression, display

    def layer(self, diff_id: str) -> tuple[oci.Descriptor, str]:
        """Choose the blob of one layer and send it; return (its descriptor, the outcome)."""
        from stepbuild.layers.compress import NONE, compressed_layer, compression_of, media_type

        key, store = blob_key(diff_id), self.store
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


def _sources_on(store: Store, content_id: str, digest: str, host: str) -> list[str]:
    """Repositories of `host` known to hold blob `digest`."""
    return [s.split("/", 1)[1] for desc, sources in store.remote_records.get(content_id)
            if desc.digest == digest for s in sources if s.split("/", 1)[0] == host]
