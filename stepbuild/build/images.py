"""Images in the store as `ImageState` values: load one by name, save one as a manifest.

The bridge between the builder's `ImageState` and the store's OCI documents. Layers are stored
uncompressed for now (digest == diff_id). An image with no layer at all gets the canonical
empty layer, because an OCI manifest must list at least one. An image named by an archive
(`oci-archive:`, `oci-layout:`, `docker-archive:`) is imported into the store first
(`import_archive`), for FROM and `COPY --from` alike.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from stepbuild.build.plan import located
from stepbuild.build.state import ImageState
from stepbuild.errors import BaseImageError, ImageNotFound, PlanError, StepbuildError
from stepbuild.oci import documents as oci
from stepbuild.oci.platform import Platform, select

if TYPE_CHECKING:
    from collections.abc import Mapping

    from stepbuild.build.seams import ImageStore
    from stepbuild.frontend import instructions as ins
    from stepbuild.store.store import Store

# FROM and COPY --from oci-archive:PATH[:REF], oci-layout:DIR[:REF],
# docker-archive:PATH[:NAME:TAG] (buildah's syntax); stepbuild.archive.load.TRANSPORTS,
# repeated here so a build need not import that module.
IMPORT_TRANSPORTS = ("oci-archive:", "oci-layout:", "docker-archive:")


def is_archive_name(name: str) -> bool:
    """Whether `name` names an image in an archive or layout dir rather than in the store."""
    return name.startswith(IMPORT_TRANSPORTS)


def import_archive(store: Store, name: str, filename: str,
                   instruction: ins.Instruction) -> str:
    """The manifest digest of the image an archive name gives, imported into the store on
    first use (`archive.load.import_base`). Its errors are located at `instruction`: a name
    that is malformed or gives no image (no such file, no such ref, several images) is the
    Stepfile's (PlanError, exit 2); an archive that fails verification is a BaseImageError."""
    from stepbuild.archive.load import import_base

    try:
        return import_base(store, name)
    except StepbuildError as exc:
        usage = exc.exit_code == 2 or isinstance(exc, ImageNotFound)
        raise located(PlanError if usage else BaseImageError, filename, instruction,
                      exc.message, hint=exc.hint) from None


def load_state(store: ImageStore, name: str, platform: Platform | None = None
               ) -> ImageState | None:
    """The image `name` (tag or digest) as a state, or None when the store does not have it.
    An index gives its image of `platform` (None: this machine's), None if it has none; an
    image that is no index is taken whatever its platform (as for COPY --from an image)."""
    found = local_image(store, name, platform or Platform.host(), strict=False)
    return found.state if found is not None else None


@dataclass(frozen=True, slots=True)
class LocalImage:
    """An image of the store, for a FROM of `platform`: `digest` (its manifest's) and
    `state`; `state` is None when the image is not of that platform, and `has` then says
    what it is (`linux/amd64`, or the platforms of an index)."""

    digest: str
    state: ImageState | None
    has: str = ""


def local_image(store: ImageStore, name: str, platform: Platform, *, strict: bool = True
                ) -> LocalImage | None:
    """The image `name` (tag or digest) for `platform`, None when the store has no image by
    that name. A tagged index gives its entry of that platform (oci/platform.select); an
    image of another platform has no state when `strict` (what a FROM needs)."""
    descriptor = store.resolve(name)
    if descriptor is None:
        return None
    if descriptor.media_type in oci.INDEX_TYPES:
        entries = store.index(descriptor).manifests
        entry = select(entries, platform)
        if entry is None:
            has = ", ".join(str(Platform.from_oci(e.platform or {})) for e in entries)
            return LocalImage(descriptor.digest, None, has or "no platform")
        descriptor = entry
    config = store.config(store.manifest(descriptor))
    state = ImageState.from_oci_json(config.to_json())
    if strict and state.platform != platform:
        return LocalImage(descriptor.digest, None, str(state.platform))
    if state.diff_ids == (oci.EMPTY_LAYER_DIFF_ID,):
        state = replace(state, diff_ids=())
    return LocalImage(descriptor.digest, state)


ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"
ANNOTATION_BASE_DIGEST = "org.opencontainers.image.base.digest"


def save_state(store: ImageStore, state: ImageState, base: tuple[str, str] | None = None,
               extra: Mapping[str, str] | None = None) -> oci.Descriptor:
    """Write the config and manifest of `state`; return the manifest descriptor.

    The manifest is annotated with the creation time and, when the image was built on an
    image (not scratch), that base's name and manifest digest (image-spec annotations.md),
    then with `extra` (`build --annotation`), which wins for the same key.
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
    annotations.update(extra or {})
    return store.put_image(config, layers, annotations)
