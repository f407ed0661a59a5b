"""An image that came from elsewhere (a pull, an archive) → a manifest in the store's form."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepbuild.oci import documents as oci

if TYPE_CHECKING:
    from stepbuild.store.store import Store


def put_received(store: Store, config: bytes, layers: list[oci.Descriptor],
                 annotations: dict[str, str] | None) -> oci.Descriptor:
    """Write the manifest of an image that came from elsewhere (a pull, an archive) in the
    store's form: its config blob byte for byte (so the image keeps its config digest) and
    `layers`, the uncompressed layer blobs already in the store; return the manifest's blob
    descriptor (untagged). No layer at all: the empty one, and the config re-serialised to
    list its diff_id (a manifest needs a layer, the schema says so; as `save_state` does)."""
    if not layers:
        parsed = oci.ImageConfig.from_bytes(config, "config")
        config = oci.ImageConfig.from_json(
            {**parsed.to_json(), "rootfs": {"type": "layers",
                                            "diff_ids": [oci.EMPTY_LAYER_DIFF_ID]}}).to_bytes()
        digest, size = store.put_blob(oci.EMPTY_LAYER)
        layers = [oci.Descriptor(oci.MEDIA_TYPE_LAYER, digest, size)]
    config_digest, config_size = store.put_blob(config)
    manifest = oci.Manifest(oci.Descriptor(oci.MEDIA_TYPE_CONFIG, config_digest, config_size),
                            tuple(layers), annotations)
    digest, size = store.put_blob(manifest.to_bytes())
    return oci.Descriptor(oci.MEDIA_TYPE_MANIFEST, digest, size)
