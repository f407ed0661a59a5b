"""store.received.put_received: a pulled or imported image's manifest in the store's form."""

from __future__ import annotations

import json
from pathlib import Path

from stepbuild.oci import documents as oci
from stepbuild.oci.digest import sha256_bytes
from stepbuild.store.gc import check
from stepbuild.store.received import put_received
from stepbuild.store.store import Store


def config_bytes(diff_ids: list[str]) -> bytes:
    # deliberately not canonical (spaces, key order): a received config is kept byte for byte
    return json.dumps({"os": "linux", "architecture": "amd64",
                       "rootfs": {"diff_ids": diff_ids, "type": "layers"},
                       "config": {"Env": ["A=1"]}}, indent=1).encode()


def test_the_config_is_kept_byte_for_byte(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    digest, size = store.put_blob(b"a layer tar")
    config = config_bytes([digest])
    layers = [oci.Descriptor(oci.MEDIA_TYPE_LAYER, digest, size)]
    desc = put_received(store, config, layers, {"org.example": "x"})
    manifest = store.manifest(desc)
    assert manifest.config.digest == sha256_bytes(config)
    assert manifest.layers == tuple(layers) and manifest.annotations == {"org.example": "x"}
    assert desc.media_type == oci.MEDIA_TYPE_MANIFEST


def test_an_image_without_layers_gets_the_empty_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    desc = put_received(store, config_bytes([]), [], None)
    manifest = store.manifest(desc)
    assert [layer.digest for layer in manifest.layers] == [oci.EMPTY_LAYER_DIFF_ID]
    assert store.config(manifest).diff_ids == (oci.EMPTY_LAYER_DIFF_ID,)
    assert store.config(manifest).to_json()["config"] == {"Env": ["A=1"]}
    assert check(store) == []
