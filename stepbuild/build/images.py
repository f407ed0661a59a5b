"""Images in the store as `ImageState` values: load one by name, save one as a manifest.

The bridge between the builder's `ImageState` and the store's OCI documents. Layers are stored
uncompressed for now (digest == diff_id). An image with no layer at all gets the canonical
empty layer, because an OCI manifest must list at least one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepbuild.build.state import ImageState
from stepbuild.oci import documents as oci

if TYPE_CHECKING:
    from stepbuild.build.seams import ImageStore


def base_descriptor(store: ImageStore, name: str) -> tuple[str, str] | None:
    """(name, manifest digest) of an image in the store, for the base annotations."""
    descriptor = store.resolve(name)
    return (name, descriptor.digest) if descriptor is not None else None


def load_state(store: ImageStore, name: str) -> ImageState | None:
    """The image `name` (tag or digest) as a state, or None when the store does not have it."""
    descriptor = store.resolve(name)
    if descriptor is None:
        return None
    config = store.config(store.manifest(descriptor))
    state = ImageState.from_oci_json(config.to_json())
    if state.diff_ids == (oci.EMPTY_LAYER_DIFF_ID,):
        state = ImageState(config=state.config, history=state.history, created=state.created,
                           architecture=state.architecture, os=state.os, author=state.author)
    return state


ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"
ANNOTATION_BASE_DIGEST = "org.opencontainers.image.base.digest"


def save_state(store: ImageStore, state: ImageState, base: tuple[str, str] | None = None
               ) -> oci.Descriptor:
    """Write the config and manifest of `state`; return the manifest descriptor.

    The manifest is annotated with the creation time and, when the image was built on an
    image (not scratch), that base's name and manifest digest (image-spec annotations.md).
    """
    diff_ids = state.diff_ids
    if not diff_ids:
        digest, _ = store.put_blob(oci.EMPTY_LAYER)
        diff_ids = (digest,)
    document = state.to_oci_json()
    document["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    config = oci.ImageConfig.from_json(document)
    layers = [store.descriptor(d, oci.MEDIA_TYPE_LAYER) for d in diff_ids]
    annotations = {ANNOTATION_CREATED: state.created}
    if base is not None:
        annotations[ANNOTATION_BASE_NAME], annotations[ANNOTATION_BASE_DIGEST] = base
    return store.put_image(config, layers, annotations)
