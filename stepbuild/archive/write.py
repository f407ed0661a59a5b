"""The OCI and docker forms of an image in the store, and the writers of their archives.

`export.py` decides where outputs go (destinations, temp files, renames); this module decides
what goes in them:

- `load_image`: the store's manifest and config of an image, every byte verified.
- `oci_image`: the manifest an OCI export carries for a compression. The config blob is the
  store's, unchanged (its diff_ids name the uncompressed layers); the layers are the store's
  blobs compressed once per store by `compress.compressed_layer` (a layer already stored in
  the asked form is used as it is); the manifest is the store's own bytes when nothing
  changes (compression none), else a new OCI manifest with the same annotations.
- `oci_index`: the same for an image index (multi-platform): each platform's `oci_image`,
  and the index of their manifests, which index.json then points at (nested, as BuildKit's
  and skopeo's `--all` layouts have it).
- `write_oci_archive`: an OCI image layout as a tar — `oci-layout`, `index.json`, `blobs/`,
  `blobs/sha256/`, then the blobs in digest order.
- `fill_layout`: adds an image to an OCI layout directory: blobs first (temp + rename each,
  a blob already there with the right size is kept), `index.json` last; another tool's
  index.json is edited as JSON, so fields we do not model survive.
- `write_docker_archive`: what skopeo and `docker save` write — `<diff_id hex>.tar` layers
  (uncompressed, which every `docker load` reads), `<config hex>.json`, legacy
  `<chain id>/{VERSION,json,layer.tar -> ../<hex>.tar}`, then `manifest.json` (Config,
  RepoTags, Layers) and `repositories` (when there are tags).

Index entries: one per name, `org.opencontainers.image.ref.name` = the name as given
(`app:1.0`, the store's own convention, which skopeo and umoci read as `DIR:app:1.0`), with the
config's platform; none named: one entry without a ref name. `--annotation
manifest-descriptor:` annotations go on every entry, `index:` ones on index.json itself
(oci/annotations.py). RepoTags: the names, `:latest`
added to one without a tag, digest references left out.

Archives are deterministic: members root-owned, mtime 0, 0644 files, 0755 dirs, a fixed
order; JSON canonical. Every blob is hashed while copied out of the store and compared with
its descriptor, size first (docs/security.md rule 4): `DigestMismatch`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from stepbuild.errors import DigestMismatch, StepbuildError, UsageError
from stepbuild.fs.durable import fsync_dir, replacing, write_file
from stepbuild.layers.compress import NONE, compressed_layer, compression_of, media_type
from stepbuild.layers.tar import DIRTYPE, END_OF_ARCHIVE, REGTYPE, SYMTYPE, Header, encode_header
from stepbuild.layers.tar import padding as tar_padding
from stepbuild.oci.digest import PREFIX, digest_hex, sha256_bytes
from stepbuild.oci.documents import (
    ANNOTATION_REF_NAME,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    canonical_json,
    layout_header,
    load_json,
)

if TYPE_CHECKING:
    from stepbuild.oci.annotations import Annotations
    from stepbuild.store.store import Store

__all__ = ["ImageSource", "OciImage", "fill_layout", "load_image", "oci_image", "oci_index",
           "umask", "write_docker_archive", "write_oci_archive"]

_CHUNK = 1 << 20


def umask() -> int:
    """The process umask (read by setting it and back: call it from one thread)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- the image ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageSource:
    """An image as the store has it; every byte read verified."""

    digest: str
    manifest: Manifest
    manifest_bytes: bytes
    config_bytes: bytes
    config: ImageConfig


def load_image(store: Store, image: str) -> ImageSource:
    """Image `image` (a tag or digest) from the store; `StepbuildError` if it is not there."""
    descriptor = store.resolve(image)
    if descriptor is None:
        raise StepbuildError(f"image {image!r} not found in the store",
                             hint="stepbuild images lists them")
    data = store.read_blob(descriptor.digest)
    manifest = Manifest.from_bytes(data, f"manifest {descriptor.digest}")
    config_bytes = store.read_blob(manifest.config.digest)
    config = ImageConfig.from_bytes(config_bytes, f"config {manifest.config.digest}")
    if len(config.diff_ids) != len(manifest.layers):
        raise StepbuildError(f"image {image!r}: {len(manifest.layers)} layers but "
                             f"{len(config.diff_ids)} diff_ids", hint="run `stepbuild check`")
    return ImageSource(descriptor.digest, manifest, data, config_bytes, config)


@dataclass(frozen=True, slots=True)
class OciImage:
    """What an OCI export writes: the manifest (or image index) that index.json points at,
    the store blobs it names, and for an index its manifests (written from memory)."""

    manifest: Descriptor
    manifest_bytes: bytes
    blobs: tuple[Descriptor, ...]  # configs and layers, each once
    platform: dict[str, Any]  # empty for an index: its entries carry the platforms
    documents: tuple[tuple[Descriptor, bytes], ...] = ()  # an index's manifests


def oci_image(store: Store, source: ImageSource, compression: str) -> OciImage:
    """The manifest and blobs of `source` exported with `compression` (compressing layers
    the store has not compressed that way yet)."""
    manifest = source.manifest
    layers = tuple(_layer(store, layer, diff_id, compression)
                   for layer, diff_id in zip(manifest.layers, source.config.diff_ids,
                                             strict=True))
    config = replace(manifest.config, media_type=MEDIA_TYPE_CONFIG)
    if (layers == manifest.layers and config == manifest.config
            and manifest.media_type == MEDIA_TYPE_MANIFEST):
        data = source.manifest_bytes  # nothing to change: the store's bytes, the same digest
    else:
        data = Manifest(config, layers, manifest.annotations).to_bytes()
    digest = sha256_bytes(data)
    blobs = tuple({d.digest: d for d in (config, *layers)}.values())
    return OciImage(Descriptor(MEDIA_TYPE_MANIFEST, digest, len(data)), data, blobs,
                    source.config.platform)


def oci_index(store: Store, index_desc: Descriptor, compression: str) -> OciImage:
    """An image index exported with `compression`: each platform's `oci_image`, and the
    index of their manifests (the store's own bytes when no manifest changed), platforms
    and order kept."""
    index = store.index(index_desc)
    images = [oci_image(store, load_image(store, entry.digest), compression)
              for entry in index.manifests]
    entries = tuple(replace(entry, media_type=image.manifest.media_type,
                            digest=image.manifest.digest, size=image.manifest.size)
                    for entry, image in zip(index.manifests, images, strict=True))
    if entries == index.manifests:
        data = store.read_blob(index_desc.digest)
    else:
        data = replace(index, manifests=entries).to_bytes()
    blobs = tuple({d.digest: d for image in images for d in image.blobs}.values())
    documents = tuple((image.manifest, image.manifest_bytes) for image in images)
    return OciImage(Descriptor(index.media_type, sha256_bytes(data), len(data)), data, blobs,
                    {}, documents)


def _layer(store: Store, layer: Descriptor, diff_id: str, compression: str) -> Descriptor:
    """The descriptor of one layer as exported with `compression`."""
    stored = compression_of(layer.media_type)
    if stored == compression and (stored != NONE or layer.digest == diff_id):
        return replace(layer, media_type=media_type(compression))  # already in that form
    if not store.has_blob(diff_id):
        raise StepbuildError(f"layer {diff_id} is stored only as {layer.media_type}: "
                             f"cannot export it with compression {compression}",
                             hint=f"export with compression={stored}")
    return compressed_layer(store, diff_id, compression)


def _index_entries(image: OciImage, names: Sequence[str],
                   annotations: Annotations | None) -> list[Descriptor]:
    """One entry per name (one without a name if none), each with the manifest-descriptor
    annotations; the ref name is set last, so an annotation cannot rename an entry."""
    extra = dict(annotations.manifest_descriptor) if annotations else {}
    entry = replace(image.manifest, platform=image.platform or None, annotations=extra or None)
    if not names:
        return [entry]
    return [replace(entry, annotations={**extra, ANNOTATION_REF_NAME: name}) for name in names]


def _index(image: OciImage, names: Sequence[str], annotations: Annotations | None) -> Index:
    """The index.json of a new layout: its entries, and the index annotations."""
    notes = dict(annotations.index) if annotations else {}
    return Index(tuple(_index_entries(image, names, annotations)), notes or None)


def _copy_blob(store: Store, desc: Descriptor, write: Callable[[bytes], Any]) -> None:
    """Copy a store blob to `write`, checking its size first and its digest on the way."""
    with open(store.blob_path(desc.digest), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != desc.size:
            raise DigestMismatch(desc.digest, None, expected_size=desc.size, actual_size=size)
        sha = hashlib.sha256()
        left = size
        while left and (chunk := f.read(min(left, _CHUNK))):
            sha.update(chunk)
            write(chunk)
            left -= len(chunk)
    actual = PREFIX + sha.hexdigest()
    if left or actual != desc.digest:
        raise DigestMismatch(desc.digest, actual, actual_size=size - left)


class _Archive:
    """A deterministic tar of an export: root-owned members, mtime 0, 0644 files, 0755 dirs."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def directory(self, name: str) -> None:
        self._out.write(encode_header(Header(name=name.encode() + b"/", type=DIRTYPE,
                                             mode=0o755)))

    def symlink(self, name: str, target: str) -> None:
        self._out.write(encode_header(Header(name=name.encode(), type=SYMTYPE, mode=0o777,
                                             linkname=target.encode())))

    def file(self, name: str, data: bytes) -> None:
        self._out.write(encode_header(Header(name=name.encode(), type=REGTYPE, mode=0o644,
                                             size=len(data))))
        self._out.write(data)
        self._out.write(tar_padding(len(data)))

    def blob(self, name: str, store: Store, desc: Descriptor) -> None:
        self._out.write(encode_header(Header(name=name.encode(), type=REGTYPE, mode=0o644,
                                             size=desc.size)))
        _copy_blob(store, desc, self._out.write)
        self._out.write(tar_padding(desc.size))

    def close(self) -> None:
        self._out.write(END_OF_ARCHIVE)


def write_oci_archive(out: BinaryIO, store: Store, image: OciImage, names: Sequence[str],
                      annotations: Annotations | None = None) -> None:
    """oci-layout, index.json, blobs/, blobs/sha256/, then the blobs in digest order."""
    tar = _Archive(out)
    tar.file("oci-layout", layout_header())
    tar.file("index.json", _index(image, names, annotations).to_bytes())
    tar.directory("blobs")
    tar.directory("blobs/sha256")
    blobs = {d.digest: d for d in image.blobs}
    documents = _documents(image)
    for digest in sorted({*blobs, *documents}):
        name = f"blobs/sha256/{digest_hex(digest)}"
        if digest in documents:
            tar.file(name, documents[digest][1])
        else:
            tar.blob(name, store, blobs[digest])
    tar.close()


def _documents(image: OciImage) -> dict[str, tuple[Descriptor, bytes]]:
    """The blobs an export writes from memory: the manifest (or index) and an index's
    manifests."""
    return {d.digest: (d, data)
            for d, data in ((image.manifest, image.manifest_bytes), *image.documents)}


def fill_layout(root: Path, store: Store, image: OciImage, names: Sequence[str],
                annotations: Annotations | None = None) -> None:
    """Add the image to the layout at `root`: blobs first, index.json last
    (docs/security.md rule 5). Index annotations are added to those already there."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(mode=0o777, parents=True, exist_ok=True)
    for desc in image.blobs:
        _put_layout_blob(blobs, desc, partial(_copy_blob, store, desc))
    # The index (if it is one) last: whoever reads the layout finds its manifests first.
    for desc, data in reversed(_documents(image).values()):
        _put_layout_blob(blobs, desc, partial(_write_bytes, data))
    fsync_dir(blobs)
    if not (root / "oci-layout").exists():
        _put_file(root / "oci-layout", layout_header())
    entries = _index_entries(image, names, annotations)
    index_path = root / "index.json"
    if not index_path.exists():
        _put_file(index_path, _index(image, names, annotations).to_bytes())
        return
    # Another tool's index: edit its JSON, not our model of it (which drops what it does not
    # know, e.g. artifactType); checked by our parser first.
    where = f"{index_path}"
    try:
        document = load_json(index_path.read_bytes(), where)
        index = Index.from_json(document, where)
    except StepbuildError as exc:
        raise UsageError(f"cannot add to {root}: {exc}") from exc
    ours = {e.ref_name for e in entries if e.ref_name}
    kept = [raw for raw, d in zip(document["manifests"], index.manifests, strict=True)
            if not (d.ref_name in ours or (not names and not d.ref_name
                                           and d.digest == image.manifest.digest))]
    document["manifests"] = [*kept, *(e.to_json() for e in entries)]
    if annotations and annotations.index:
        document["annotations"] = {**(index.annotations or {}), **annotations.index}
    _put_file(index_path, canonical_json(document))


def _put_layout_blob(blobs: Path, desc: Descriptor,
                     copy: Callable[[Callable[[bytes], Any]], None]) -> None:
    final = blobs / digest_hex(desc.digest)
    with suppress(FileNotFoundError):
        if final.stat().st_size == desc.size:
            return  # already there (an earlier export, or another image sharing it)
    with replacing(final, 0o666 & ~umask(), sync_dir=False) as f:  # the caller syncs blobs/
        copy(f.write)


def _write_bytes(data: bytes, write: Callable[[bytes], Any]) -> None:
    write(data)


def _put_file(path: Path, data: bytes) -> None:
    write_file(path, data, 0o666 & ~umask())


# --- docker archive ----------------------------------------------------------------------------


def _docker_tag(name: str) -> str | None:
    """A RepoTags entry for a name: `repo:tag` (`:latest` added); None for a digest ref."""
    if "@" in name:
        return None
    return name if ":" in name.rpartition("/")[2] else f"{name}:latest"


def _chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """image-spec config.md ChainIDs, as the legacy layer ids (unique per layer position)."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if chain:
            diff_id = sha256_bytes(f"{chain[-1]} {diff_id}".encode())
        chain.append(diff_id)
    return [digest_hex(c) for c in chain]


def write_docker_archive(out: BinaryIO, store: Store, source: ImageSource,
                         names: Sequence[str]) -> None:
    """The layout skopeo and `docker save` write: `<diff_id hex>.tar` layers, the config as
    `<config hex>.json`, legacy `<id>/` dirs, then manifest.json and repositories."""
    diff_ids = source.config.diff_ids
    for diff_id in diff_ids:
        if not store.has_blob(diff_id):
            raise StepbuildError(f"layer {diff_id} is not in the store uncompressed: "
                                 "a docker archive needs it", hint="use type=oci")
    tar = _Archive(out)
    for diff_id in dict.fromkeys(diff_ids):
        desc = Descriptor(MEDIA_TYPE_LAYER, diff_id, store.blob_path(diff_id).stat().st_size)
        tar.blob(f"{digest_hex(diff_id)}.tar", store, desc)
    config_name = f"{digest_hex(source.manifest.config.digest)}.json"
    tar.file(config_name, source.config_bytes)
    ids = _chain_ids(diff_ids)
    for i, (layer_id, diff_id) in enumerate(zip(ids, diff_ids, strict=True)):
        tar.directory(layer_id)
        tar.file(f"{layer_id}/VERSION", b"1.0")
        legacy = {"id": layer_id, **({"parent": ids[i - 1]} if i else {})}
        tar.file(f"{layer_id}/json", canonical_json(legacy))
        tar.symlink(f"{layer_id}/layer.tar", f"../{digest_hex(diff_id)}.tar")
    tags = [t for t in map(_docker_tag, names) if t is not None]
    manifest = [{"Config": config_name, "RepoTags": tags or None,
                 "Layers": [f"{digest_hex(d)}.tar" for d in diff_ids]}]
    tar.file("manifest.json", canonical_json(manifest))
    if tags and ids:
        repositories: dict[str, dict[str, str]] = {}
        for tag in tags:
            repo, _, label = tag.rpartition(":")
            repositories.setdefault(repo, {})[label] = ids[-1]
        tar.file("repositories", canonical_json(repositories))
    tar.close()
