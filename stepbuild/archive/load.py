"""Import images from OCI archives, OCI layout dirs and docker archives into the store.

Two entry points:

- `load(store, stream)`: `stepbuild load < x.tar`. The archive kind is detected from its
  content: a `manifest.json` makes it a docker archive (`docker save`, skopeo's
  `docker-archive:`), else `oci-layout` + `index.json` an OCI archive (image-layout.md in a
  tar: `buildah push … oci-archive:`, `skopeo copy … oci-archive:`). The stream may be gzip or
  zstd compressed (`docker save | gzip`). Every image in it is imported and tagged with its
  names: a docker archive's `RepoTags`, an OCI archive's `org.opencontainers.image.ref.name`
  annotations that are references (`app:1`, not a bare tag such as `latest`: an image with
  no name is loaded untagged, and the CLI prints its digest), each in Docker's familiar form
  (`docker.io/library/foo:1` → `foo:1`). An index entry (a multi-platform image, as
  `skopeo copy --all … oci-archive:` and `stepbuild export` of an index write) is loaded
  whole: every platform's image it holds, and an index of them tagged with its names.
- `import_base(store, name)`: FROM `oci-archive:PATH[:REF]`, `oci-layout:DIR[:REF]`,
  `docker-archive:PATH[:NAME:TAG|:@INDEX]`. The syntax and the choice of image are buildah's
  (containers/image transports; checked with buildah 1.28 here): PATH ends at the first `:`;
  a relative PATH is relative to the current directory of the `stepbuild` process, *not* to
  the build context (buildah: `open /cwd/x.tar: no such file or directory` for a file that
  is only in the context); without REF the archive must hold exactly one image ("more than
  one image in oci, choose an image"); REF is matched against the ref names as written in
  the archive (OCI) or the familiar RepoTags (docker). BuildKit has no such FROM forms. The
  imported image is not tagged; a small record (`store.import_records`) maps the
  archive's identity (path, device, inode, size, mtime, ctime; for a layout dir the bytes
  of its index.json) to the imported manifest, so an unchanged archive is imported once.

Verification (docs/security.md rule 4): an archive is first streamed into a private file under the
store's tmp/ (a layout dir's blobs are copied there one by one), so what is verified is what
is used. Then, for every blob a descriptor names, its size, then its sha256, before it is
parsed, decompressed or unpacked; documents have size limits. A layer is decompressed by its
magic bytes (gzip, zstd, or none) into a temp tar while it is hashed; that sha256 must be the
config's diff_id for the layer (a docker archive names no blob digests: the diff_id is its
verification), and only then is it unpacked by `apply.apply_layer` — OCI whiteouts become
overlay whiteouts, every entry contained in the target — into a dir under tmp/, which
`store.commit_layer` renames into place with the tar as its blob. A layer the store already
has is not unpacked again. Nothing half-done gets a real name: on any error the temp files
and dirs are removed and the error names the archive, the document or layer, and the entry.

The config blob is stored with its original bytes, so the image keeps its config digest (its
image ID: the same as `skopeo inspect`/`podman images` show); the manifest is new, because
the store keeps layers uncompressed (digest == diff_id), and keeps the source manifest's
annotations. Stored with `put_blob` + `tag` rather than `put_image`, which re-serialises
the config (oci/documents.py: "never re-serialise a document you did not create").

Reading archives and layout dirs (with limits, verifying blobs) is `read.py`'s job;
unpacking a layer is `layers/apply.py`'s. The builder imports this module only for a FROM or a
`COPY --from` that names a transport (`build/images.IMPORT_TRANSPORTS`), and this module
imports `apply` (and the unpacking machinery of `unpack`) only when a layer is really
unpacked.
"""

from __future__ import annotations

import os
import platform
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from stepbuild.archive.read import (
    ArchiveSource,
    LayoutSource,
    Opener,
    Source,
    private_copy,
)
from stepbuild.errors import (
    DigestMismatch,
    ImageNotFound,
    InvalidDocument,
    LayerError,
    StepbuildError,
    UsageError,
)
from stepbuild.layers.decompress import decompress_to
from stepbuild.oci import documents as oci
from stepbuild.oci.digest import PREFIX, is_digest, sha256_bytes
from stepbuild.store.images import resolve_image
from stepbuild.store.received import put_received

if TYPE_CHECKING:
    from stepbuild.store.store import Store

__all__ = [
    "TRANSPORTS",
    "ImportNotFound",
    "LoadedImage",
    "Transport",
    "import_base",
    "load",
    "parse_transport",
]

TRANSPORTS = ("oci-archive:", "oci-layout:", "docker-archive:")

MAX_DOCUMENT = 4 << 20  # index.json, manifest.json, manifests (what registries accept)
MAX_CONFIG = 16 << 20  # image configs (long histories)
MAX_NESTED_INDEXES = 4
_CONTAINERD_NAME = "io.containerd.image.name"
# OCI layer media types we can unpack; the +encrypted, foreign and unknown ones we cannot.
_LAYER_TYPES = oci.LAYER_TYPES - {oci.DOCKER_LAYER_FOREIGN} | {
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
}


class ImportNotFound(ImageNotFound):
    """The archive or layout dir cannot be read, or holds no image of that name or for this
    platform, or several when no name was given. At a FROM: exit 2, with the location."""

    def __init__(self, name: str, problem: str, *, hint: str | None = None) -> None:
        StepbuildError.__init__(self, f"{name}: {problem}", hint=hint)
        self.name = name


_RELATIVE_HINT = ("a relative path is relative to the current directory (as in buildah), "
                  "not to the build context")


@dataclass(frozen=True, slots=True)
class LoadedImage:
    """One image imported into the store: its (new) manifest digest, the refs tagged, its
    layers. For an image index: the index's (new) digest, and no diff_ids."""

    digest: str
    names: tuple[str, ...]
    diff_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Transport:
    """A FROM transport reference: `kind` is oci-archive, oci-layout or docker-archive."""

    kind: str
    path: str
    ref: str | None


def parse_transport(name: str) -> Transport | None:
    """`oci-archive:x.tar:v1` → Transport("oci-archive", "x.tar", "v1"); None for other
    names. The path ends at the first `:` (containers/image does the same)."""
    if not name.startswith(TRANSPORTS):
        return None
    kind, _, rest = name.partition(":")
    path, _, ref = rest.partition(":")
    if not path:
        raise UsageError(f"{name!r}: no path after {kind}:",
                         hint=f"e.g. FROM {kind}:image.tar" if kind != "oci-layout"
                         else "e.g. FROM oci-layout:dir:tag")
    return Transport(kind, path, ref or None)


# =============================================================================================
# entry points


def load(store: Store, stream: BinaryIO) -> list[LoadedImage]:
    """Import every image of the archive read from `stream`; tag each with its names.

    Holds the store lock shared (a concurrent prune waits). Raises StepbuildError
    (InvalidDocument, DigestMismatch, LayerError, ...) naming what is wrong; no temp file is
    left then, and no image is tagged (layers already committed stay, as garbage for prune).
    """
    with store.lock(exclusive=False), private_copy(store, stream) as path, \
            _os_errors("archive"):
        archive = ArchiveSource(path, "archive")
        try:
            imported: list[tuple[str, _Image | None, tuple[str, ...]]]
            if archive.has("manifest.json"):
                imported = [(_import_image(store, archive, image), image, names)
                            for image, names in _docker_images(archive)]
            else:
                imported = _load_oci(store, archive)
        finally:
            archive.close()
        loaded = []
        for digest, image, names in imported:
            manifest = resolve_image(store, digest)  # the lock keeps prune off it
            for name in names:
                store.tag(name, manifest)
            loaded.append(LoadedImage(digest, names, image.diff_ids if image else ()))
        return loaded


def import_base(store: Store, name: str) -> str:
    """Import the image a FROM transport reference names, once; return its manifest digest.

    Raises ImportNotFound, an ImageNotFound (the archive, dir or ref does not exist, or the
    archive holds more than one image and no ref was given), UsageError for a malformed
    reference, and the errors of `load` for a bad archive. The caller holds the store lock
    (shared) until it has used the image: it is untagged, so only that keeps prune off it.
    """
    transport = parse_transport(name)
    if transport is None:
        raise UsageError(f"{name!r} is not an oci-archive:, oci-layout: or docker-archive: name")
    path = Path(transport.path)
    identity = _identity(transport, path, name)
    cached = _cached_import(store, identity)
    if cached is not None:
        return cached
    if transport.kind == "oci-layout":
        try:
            layout = LayoutSource(path, f"layout {transport.path}")
        except OSError as exc:
            raise _unreadable(name, path, exc) from None
        try:
            with _os_errors(name):
                images = _oci_images(layout)
                digest = _import_image(store, layout, _choose(images, transport, name))
        finally:
            layout.close()
    else:
        try:
            opened = open(path, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise _unreadable(name, path, exc) from None
        with opened, private_copy(store, opened) as copy, _os_errors(name):
            archive = ArchiveSource(copy, f"archive {transport.path}")
            try:
                if transport.kind == "docker-archive":
                    images = _docker_images(archive)
                else:
                    images = _oci_images(archive)
                digest = _import_image(store, archive, _choose(images, transport, name))
            finally:
                archive.close()
    store.import_records.put(identity, digest)
    return digest


# =============================================================================================
# what an archive holds


@dataclass(frozen=True, slots=True)
class _Layer:
    """A layer to import: its blob's name in the source, the descriptor (None in docker
    archives, which have no blob digests), and its diff_id from the config."""

    name: str
    descriptor: oci.Descriptor | None
    diff_id: str


@dataclass(frozen=True, slots=True)
class _Image:
    config: bytes  # verified bytes, as found
    diff_ids: tuple[str, ...]
    layers: tuple[_Layer, ...]
    annotations: dict[str, str] | None
    names: tuple[str, ...]  # ref names as written in the archive, for FROM …:REF


@contextmanager
def _os_errors(what: str) -> Iterator[None]:
    """A failed read or write (EIO, ENOSPC, ...) as a StepbuildError naming `what`."""
    try:
        yield
    except OSError as exc:
        raise StepbuildError(f"{what}: {exc.strerror or exc}") from exc


def _unreadable(name: str, path: Path, exc: OSError) -> ImportNotFound:
    return ImportNotFound(name, f"cannot read {path}: {exc.strerror}",
                          hint=None if path.is_absolute() else _RELATIVE_HINT)


def _choose(images: list[tuple[_Image, tuple[str, ...]]], transport: Transport,
            name: str) -> _Image:
    """The image FROM means: the one matching REF, or the only one (buildah's rule)."""
    ref, where = transport.ref, transport.path
    known = sorted({n for image, names in images for n in (*names, *image.names)
                    if not is_digest(n)})
    if ref is None:
        if len(images) != 1:
            raise ImportNotFound(name, f"{len(images)} images in {where}",
                                 hint=f"name one: {transport.kind}:{where}:REF (it has: "
                                      f"{', '.join(known) or 'no names'})")
        return images[0][0]
    if transport.kind == "docker-archive" and ref.startswith("@"):
        index = ref[1:]
        if not index.isdigit() or int(index) >= len(images):
            raise ImportNotFound(name, f"no image {ref} in {where}",
                                 hint=f"it holds {len(images)} (@0 is the first)")
        return images[int(index)][0]
    wanted = {ref, _familiar(ref)}
    for image, names in images:
        if wanted & {*names, *image.names}:
            return image
    raise ImportNotFound(name, f"no image named {ref!r} in {where}",
                         hint=f"it has: {', '.join(known) or 'no names'}")


def _oci_images(source: Source) -> list[tuple[_Image, tuple[str, ...]]]:
    """Every image of an OCI layout (index.json's entries; an index entry gives this
    machine's platform's image), with the names to tag it with."""
    return [(_oci_image(source, entry, _platform_manifest(source, entry, 0)), names)
            for entry, names in _layout_entries(source)]


def _layout_entries(source: Source) -> list[tuple[oci.Descriptor, tuple[str, ...]]]:
    """index.json's entries, each with the names to tag its image with (familiar forms of
    the ref names that are references); the oci-layout header checked first."""
    where = f"{source.label}: oci-layout"
    if not source.has("oci-layout"):
        raise InvalidDocument(source.label, "neither manifest.json (docker archive) nor "
                                            "oci-layout (OCI archive) found")
    header = oci.load_json(source.read("oci-layout", MAX_DOCUMENT), where)
    if not isinstance(header, dict) or header.get("imageLayoutVersion") != oci.LAYOUT_VERSION:
        raise InvalidDocument(where, f"imageLayoutVersion must be {oci.LAYOUT_VERSION}")
    index = oci.Index.from_bytes(source.read("index.json", MAX_DOCUMENT),
                                 f"{source.label}: index.json")
    return [(entry, tuple(dict.fromkeys(_familiar(n) for n in _ref_names(entry)
                                        if _is_image_name(n))))
            for entry in index.manifests]


def _ref_names(entry: oci.Descriptor) -> tuple[str, ...]:
    annotations = entry.annotations or {}
    return tuple(n for n in (annotations.get(_CONTAINERD_NAME), entry.ref_name) if n)


def _oci_image(source: Source, entry: oci.Descriptor, manifest_desc: oci.Descriptor) -> _Image:
    """The image of `manifest_desc`, reached from index.json's `entry`, read and checked."""
    manifest = oci.Manifest.from_bytes(
        _read_blob(source, manifest_desc, MAX_DOCUMENT), f"manifest {manifest_desc.digest}")
    config = _read_blob(source, manifest.config, MAX_CONFIG)
    diff_ids = _diff_ids(config, manifest.config.digest, len(manifest.layers))
    layers = []
    for i, (desc, diff_id) in enumerate(zip(manifest.layers, diff_ids, strict=True)):
        if desc.media_type not in _LAYER_TYPES:
            raise InvalidDocument(f"manifest {manifest_desc.digest}: layers[{i}]",
                                  f"cannot unpack a layer of media type {desc.media_type}")
        layers.append(_Layer(_blob_name(desc.digest), desc, diff_id))
    # Its digests too, for `oci-layout:DIR:sha256:…` (buildx's oci-layout://DIR@sha256:…).
    digests = tuple(dict.fromkeys((entry.digest, manifest_desc.digest)))
    return _Image(config, diff_ids, tuple(layers), manifest.annotations,
                  (*_ref_names(entry), *digests))


def _load_oci(store: Store, source: Source) -> list[tuple[str, _Image | None, tuple[str, ...]]]:
    """`load` of an OCI archive: each index.json entry imported (untagged) — an image, or
    an image index whole (every platform's image, then an index of them in the store's
    form: `Store.put_index`, platforms, order and annotations kept; a platform whose
    manifest the archive lacks is left out). Returns (the local
    manifest or index digest, the image (None for an index), the names)."""
    loaded: list[tuple[str, _Image | None, tuple[str, ...]]] = []
    for entry, names in _layout_entries(source):
        if entry.media_type not in oci.INDEX_TYPES:
            image = _oci_image(source, entry, _platform_manifest(source, entry, 0))
            loaded.append((_import_image(store, source, image), image, names))
            continue
        index = oci.Index.from_bytes(_read_blob(source, entry, MAX_DOCUMENT),
                                     f"index {entry.digest}")
        locals_ = []
        for child in _platform_entries(index):
            if source.size(_blob_name(child.digest)) is None:
                continue  # a partial index: containerd's export of some platforms writes those
            digest = _import_image(store, source, _oci_image(source, entry, child))
            local = store.resolve(digest)
            assert local is not None  # just put there, under the lock
            locals_.append(local)
        if not locals_:
            raise InvalidDocument(f"{source.label}: index {entry.digest}",
                                  "no image of a platform in it")
        loaded.append((store.put_index(locals_, index.annotations).digest, None, names))
    return loaded


def _platform_entries(index: oci.Index) -> list[oci.Descriptor]:
    """An index's images of a platform: not its nested indexes, nor the attestation
    manifests BuildKit adds (platform unknown/unknown), which are no images to run."""
    return [child for child in index.manifests
            if child.media_type in oci.MANIFEST_TYPES and child.platform
            and child.platform.get("os") != "unknown"]


def _is_image_name(ref_name: str) -> bool:
    """Whether an OCI ref name is a reference (`app:1`, `example.com/app`) and so may name
    the loaded image. A bare component (`latest`, `v1`, as `skopeo copy … oci-archive:x.tar:v1`
    and buildah write) is a tag within the archive, not a repository: Docker's load (through
    containerd) ignores such a name too; podman would make it `localhost/latest:latest`
    (podman#11553). It still selects the image for FROM `oci-archive:x.tar:latest`."""
    return any(c in ref_name for c in "/:@")


def _platform_manifest(source: Source, desc: oci.Descriptor, depth: int) -> oci.Descriptor:
    """`desc` if it is a manifest; for an index, the manifest for this machine."""
    if desc.media_type in oci.MANIFEST_TYPES:
        return desc
    if desc.media_type not in oci.INDEX_TYPES or depth >= MAX_NESTED_INDEXES:
        raise InvalidDocument(f"{source.label}: {desc.digest}",
                              f"not an image manifest or index ({desc.media_type})")
    index = oci.Index.from_bytes(_read_blob(source, desc, MAX_DOCUMENT), f"index {desc.digest}")
    arch = _host_architecture()
    for child in index.manifests:
        plat = child.platform or {}
        if plat.get("os") == "linux" and plat.get("architecture") == arch:
            return _platform_manifest(source, child, depth + 1)
    found = sorted(f"{(c.platform or {}).get('os')}/{(c.platform or {}).get('architecture')}"
                   for c in index.manifests)
    raise ImportNotFound(f"{source.label}: index {desc.digest}", f"no linux/{arch} image",
                         hint=f"the index has: {', '.join(found) or 'nothing'}")


def _docker_images(source: Source) -> list[tuple[_Image, tuple[str, ...]]]:
    """Every image of a docker archive's manifest.json, with its RepoTags (familiar)."""
    where = f"{source.label}: manifest.json"
    entries = oci.load_json(source.read("manifest.json", MAX_DOCUMENT), where)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InvalidDocument(where, "expected an array of objects")
    images = []
    for i, entry in enumerate(entries):
        here = f"{where}[{i}]"
        config_name, tags, layer_names = entry.get("Config"), entry.get("RepoTags"), \
            entry.get("Layers")
        if not isinstance(config_name, str):
            raise InvalidDocument(here, "Config must be a string")
        if not isinstance(layer_names, list) or not all(isinstance(n, str) for n in layer_names):
            raise InvalidDocument(here, "Layers must be an array of strings")
        if tags is not None and (not isinstance(tags, list)
                                 or not all(isinstance(t, str) for t in tags)):
            raise InvalidDocument(here, "RepoTags must be an array of strings")
        config = source.read(config_name, MAX_CONFIG)
        named = _digest_in_name(config_name)
        if named is not None and sha256_bytes(config) != named:
            raise DigestMismatch(named, sha256_bytes(config))
        digest = sha256_bytes(config)
        diff_ids = _diff_ids(config, digest, len(layer_names))
        layers = tuple(_Layer(n, _named_blob(source, n), d)
                       for n, d in zip(layer_names, diff_ids, strict=True))
        names = tuple(dict.fromkeys(_familiar(t) for t in tags or ()))
        images.append((_Image(config, diff_ids, layers, None, names), names))
    return images


def _named_blob(source: Source, name: str) -> oci.Descriptor | None:
    """A descriptor for a docker-archive layer stored under its digest (`blobs/sha256/<hex>`,
    as Docker 25+ writes them), so it is verified like an OCI blob; None for other names
    (`<id>/layer.tar`: the id is no digest; the diff_id check is then the verification)."""
    digest = PREFIX + name.rpartition("blobs/sha256/")[2] if "blobs/sha256/" in name else ""
    size = source.size(name)
    if not is_digest(digest) or size is None:
        return None
    return oci.Descriptor(oci.MEDIA_TYPE_LAYER, digest, size)


def _diff_ids(config: bytes, digest: str, layers: int) -> tuple[str, ...]:
    parsed = oci.ImageConfig.from_bytes(config, f"config {digest}")
    if len(parsed.diff_ids) != layers:
        raise InvalidDocument(f"config {digest}",
                              f"{len(parsed.diff_ids)} diff_ids for {layers} layers")
    return parsed.diff_ids


def _digest_in_name(name: str) -> str | None:
    """The digest a docker-archive file name states: `blobs/sha256/<hex>` or `<hex>.json`."""
    base = posixpath.basename(name).removesuffix(".json")
    digest = PREFIX + base
    return digest if is_digest(digest) else None


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest[len(PREFIX):]


def _read_blob(source: Source, desc: oci.Descriptor, limit: int) -> bytes:
    """A small blob (a document), its size and digest checked against `desc`."""
    name = _blob_name(desc.digest)
    if desc.size > limit:
        raise InvalidDocument(f"{source.label}: {desc.digest}",
                              f"{desc.size} bytes, more than the {limit} a document may have")
    size = source.size(name)
    if size != desc.size:
        raise DigestMismatch(desc.digest, None, expected_size=desc.size, actual_size=size)
    data = source.read(name, limit)
    actual = sha256_bytes(data)
    if actual != desc.digest:
        raise DigestMismatch(desc.digest, actual, actual_size=len(data))
    return data


def _familiar(name: str) -> str:
    """Docker's short form of a reference: `docker.io/library/foo:1` → `foo:1`."""
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/",
                   "index.docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _host_architecture() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


# =============================================================================================
# importing one image


def _import_image(store: Store, source: Source, image: _Image) -> str:
    """Import the layers and config of `image`; return the new manifest's digest (untagged)."""
    lowers: list[Path] = []
    descriptors = []
    for layer in image.layers:
        shown = layer.descriptor.digest if layer.descriptor is not None else layer.diff_id
        label = f"{source.label}: layer {shown}"
        with source.verified_blob(store, layer.name, layer.descriptor) as opener:
            if not store.has_layer(layer.diff_id):
                _unpack_layer(store, opener, layer, lowers, label)
        lowers.insert(0, store.layer_dir(layer.diff_id))
        size = store.blob_path(layer.diff_id).stat().st_size
        descriptors.append(oci.Descriptor(oci.MEDIA_TYPE_LAYER, layer.diff_id, size))
    return str(put_received(store, image.config, descriptors, image.annotations).digest)


def _unpack_layer(store: Store, opener: Opener, layer: _Layer, lowers: list[Path],
                  label: str) -> None:
    """Decompress (verifying the diff_id), apply into tmp/, commit. Cleans up on error."""
    from stepbuild.layers.apply import commit_applied

    tar = store.tmp_file("import-")
    try:
        actual = decompress_to(opener(), tar, label)
        if actual != layer.diff_id:
            raise DigestMismatch(layer.diff_id, actual)
        commit_applied(store, tar, layer.diff_id, lowers, label, "import-")
    except OSError as exc:
        raise LayerError(f"{label}: {exc.strerror or exc}") from exc
    finally:
        with suppress(FileNotFoundError):
            tar.unlink()


# =============================================================================================
# the import record of FROM archives


def _identity(transport: Transport, path: Path, name: str) -> list[Any]:
    """What makes a FROM archive "the same" as one imported before."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
        if transport.kind == "oci-layout":
            with open(os.path.join(real, "index.json"), "rb") as f:
                fingerprint: list[Any] = [sha256_bytes(f.read(MAX_DOCUMENT + 1))]
        else:
            fingerprint = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    except OSError as exc:
        raise _unreadable(name, path, exc) from None
    return [1, transport.kind, real, transport.ref, *fingerprint]


def _cached_import(store: Store, identity: list[Any]) -> str | None:
    """The manifest digest an identical archive was imported as, if the store still has the
    image whole; a bad or stale record is a miss (docs/security.md rule 7)."""
    digest = store.import_records.get(identity)
    try:
        desc = store.resolve(digest) if digest is not None else None
        if desc is None:
            return None
        diff_ids = store.config(store.manifest(desc)).diff_ids
    except (OSError, StepbuildError):
        return None
    if all(d == oci.EMPTY_LAYER_DIFF_ID or store.has_layer(d) for d in diff_ids):
        return str(digest)
    return None
