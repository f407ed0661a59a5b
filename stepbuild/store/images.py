"""Which image manifest a name means, for a platform: an image index → one of its entries.

A name in the store (a tag, a digest, a digest prefix: `Store.resolve`) names an image
manifest or an image index (one manifest per platform, `Store.put_index`). Commands that use
one image (run, inspect --platform, history, export to docker/local/tar, a single-platform
push) call `image_for`; commands that handle a whole index (push, export to oci/oci-layout,
inspect) call `resolve_image` and look at the media type themselves.

The rule, as podman and BuildKit apply it: an index gives the entry of the platform asked
for, else of this machine's (`Platform.host()`); a manifest is itself, but when a platform
was asked its config must be of that platform. Either miss is `PlatformNotFound`, which
lists what there is. Reads only; no store writes here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from stepbuild.errors import (
    BlobNotFound,
    DigestMismatch,
    ImageNotFound,
    InvalidDocument,
    PlatformNotFound,
)
from stepbuild.oci import documents as oci
from stepbuild.oci.digest import is_digest
from stepbuild.oci.platform import Platform, select

if TYPE_CHECKING:
    from stepbuild.store.store import Store

__all__ = ["entry_for", "image_for", "index_platforms", "is_index", "resolve_image", "summary"]

MAX_INDEX_SIZE = 4 << 20  # as MAX_MANIFEST_SIZE: what registries accept


def is_index(desc: oci.Descriptor) -> bool:
    return desc.media_type in oci.INDEX_TYPES


def resolve_image(store: Store, name: str) -> oci.Descriptor:
    """The manifest or index descriptor `name` names (`Store.resolve`), and also the digest
    of an untagged index in the store (a build for several platforms before it is tagged).
    `ImageNotFound`."""
    found = store.resolve(name)
    if found is None and is_digest(name):
        found = _untagged_index(store, name)
    if found is None:
        raise ImageNotFound(name, hint="stepbuild images lists them")
    return found


def image_for(store: Store, name: str, platform: Platform | None = None) -> oci.Descriptor:
    """The image manifest descriptor `name` means for `platform` (None: this machine's for
    an index, any for a single image). `ImageNotFound`, `PlatformNotFound`."""
    return entry_for(store, resolve_image(store, name), name, platform)


def entry_for(store: Store, desc: oci.Descriptor, name: str,
              platform: Platform | None = None) -> oci.Descriptor:
    """`image_for` of an already resolved descriptor (`name` is for messages)."""
    if is_index(desc):
        index = store.index(desc)
        wanted = platform or Platform.host()
        chosen: oci.Descriptor | None = select(
            [e for e in index.manifests if e.media_type in oci.MANIFEST_TYPES], wanted)
        if chosen is None:
            raise PlatformNotFound(name, str(wanted), index_platforms(index))
        return replace(chosen, annotations=None)
    if platform is not None:
        config = store.config(store.manifest(desc))
        have = Platform.from_oci(config.platform)
        if have != platform:
            raise PlatformNotFound(name, str(platform), (str(have),))
    return desc


def index_platforms(index: oci.Index) -> tuple[str, ...]:
    """The platforms of an index's entries, as people write them, in its order."""
    return tuple(str(Platform.from_oci(e.platform)) if e.platform else "unknown"
                 for e in index.manifests)


def summary(store: Store, desc: oci.Descriptor) -> tuple[int, tuple[str, ...]]:
    """The size of an image's layer blobs (of an index: its platforms' layers, each once)
    and its platforms, for `stepbuild images`."""
    if is_index(desc):
        index = store.index(desc)
        manifests = [store.manifest(entry) for entry in index.manifests]
        platforms = index_platforms(index)
    else:
        manifests = [store.manifest(desc)]
        stated = desc.platform or store.config(manifests[0]).platform
        platforms = (str(Platform.from_oci(stated)),)
    layers = {layer.digest: layer.size for m in manifests for layer in m.layers}
    return sum(layers.values()), platforms


def _untagged_index(store: Store, digest: str) -> oci.Descriptor | None:
    path = store.blob_path(digest) if store.has_blob(digest) else None
    if path is None or path.stat().st_size > MAX_INDEX_SIZE:
        return None
    data = store.read_blob(digest)
    try:
        index = oci.Index.from_bytes(data, f"index {digest}")
    except InvalidDocument:
        return None
    if not index.manifests or not all(e.media_type in oci.MANIFEST_TYPES
                                      for e in index.manifests):
        return None
    try:
        for entry in index.manifests:
            store.require_blob(entry)
    except (BlobNotFound, DigestMismatch):
        return None
    return oci.Descriptor(index.media_type or oci.MEDIA_TYPE_INDEX, digest, len(data))
