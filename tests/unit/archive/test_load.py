"""load.py without a build: which names an OCI archive's ref names give the loaded images.

Images without layers, so nothing is unpacked; the layer checks, real tools and the bad-tar
corpus are in tests/integration/test_import.py.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from stepbuild.archive.load import import_base, load
from stepbuild.oci.digest import sha256_bytes
from stepbuild.store.store import Store

REF_NAME = "org.opencontainers.image.ref.name"


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _oci_archive(*ref_names: str | None) -> bytes:
    """An OCI archive of one layerless image per ref name (each with its own config, so
    each is a different image); None: an entry without the annotation."""
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
    entries: list[dict[str, Any]] = []
    for i, ref in enumerate(ref_names):
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "config": {"Env": [f"N={i}"]},
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha256_bytes(config), "size": len(config)},
            "layers": []}).encode()
        for blob in (config, manifest):
            files["blobs/sha256/" + sha256_bytes(blob)[7:]] = blob
        entry: dict[str, Any] = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                 "digest": sha256_bytes(manifest), "size": len(manifest)}
        if ref is not None:
            entry["annotations"] = {REF_NAME: ref}
        entries.append(entry)
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": entries}).encode()
    return _tar(files)


def test_a_bare_tag_does_not_name_the_image(tmp_path: Path) -> None:
    """`skopeo copy … oci-archive:x.tar:latest` writes ref name `latest`: that is a tag in
    the archive, not a repository; the image is loaded untagged (the CLI prints its digest)."""
    store = Store(tmp_path / "store")
    [image] = load(store, io.BytesIO(_oci_archive("latest")))
    assert image.names == ()
    assert image.digest.startswith("sha256:")
    assert store.resolve(image.digest) is not None
    assert store.images() == []
    assert store.resolve("latest") is None and store.resolve("latest:latest") is None


def test_references_still_name_the_image(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    loaded = load(store, io.BytesIO(_oci_archive(
        "app:1", "example.com/app:2", "docker.io/library/foo:3", "v1.0", "example.com/bare",
        None)))
    assert [i.names for i in loaded] == [("app:1",), ("example.com/app:2",), ("foo:3",), (),
                                         ("example.com/bare",), ()]
    for name, image in (("app:1", loaded[0]), ("example.com/app:2", loaded[1]),
                        ("foo:3", loaded[2]), ("example.com/bare", loaded[4])):
        resolved = store.resolve(name)
        assert resolved is not None and resolved.digest == image.digest
    assert store.resolve("v1.0") is None


def test_a_bare_tag_still_chooses_the_from_image(tmp_path: Path) -> None:
    """FROM oci-archive:x.tar:latest matches the ref name as written in the archive."""
    store = Store(tmp_path / "store")
    archive = tmp_path / "x.tar"
    archive.write_bytes(_oci_archive("v1", "latest"))
    [_, latest] = load(store, io.BytesIO(archive.read_bytes()))
    assert import_base(store, f"oci-archive:{archive}:latest") == latest.digest
