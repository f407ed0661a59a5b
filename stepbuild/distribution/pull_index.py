"""`stepbuild pull --platform P` and `--all-platforms`: pulls that choose from an image index.

What a reference names in the registry (its *top* document) is read first, from the first
endpoint that serves it (mirrors first, as pull.py does). Then:

- an image manifest: pulled as `pull` does; with a platform asked, its config must be of that
  platform (`PlatformNotFound`, and nothing is tagged);
- an image index, one platform (`platform`, else this machine's, as podman and docker do):
  the entry of that platform is pulled by its digest and stored as a single-platform image
  under the reference's name; an index without it is `PlatformNotFound` listing what it has;
- an image index with `all_platforms`: every entry is pulled by digest, and an index of
  their local manifests (`Store.put_index`, platforms and order kept, the index's
  annotations too) is tagged with the name. The store keeps layers uncompressed, so its
  manifests (and index) have other digests than the registry's, but the same ones in every
  store: an index pushed from one store and pulled into another gets the same local digest
  there.

The tag is written last, after everything it names is in the store (pull.py's rule).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from stepbuild.distribution.connection import Connection
from stepbuild.distribution.display import TransferDisplay
from stepbuild.distribution.local_names import local_name
from stepbuild.distribution.pull import PullResult, first_serving, pull
from stepbuild.distribution.reference import Reference, parse_reference
from stepbuild.distribution.workers import DEFAULT_JOBS
from stepbuild.errors import PlatformNotFound, UsageError
from stepbuild.oci import documents as oci
from stepbuild.oci.platform import Platform, select
from stepbuild.store.images import entry_for, index_platforms

if TYPE_CHECKING:
    from stepbuild.store.store import Store

__all__ = ["pull_platforms"]


def pull_platforms(store: Store, reference: str, *, platform: Platform | None = None,
                   all_platforms: bool = False, connection: Connection | None = None,
                   display: TransferDisplay | None = None,
                   jobs: int = DEFAULT_JOBS) -> PullResult:
    """Pull `reference` for `platform` (None: this machine's), or with `all_platforms` the
    whole index, and tag it with the reference's familiar name. Raises what `pull` raises,
    and `PlatformNotFound`; UsageError for both a platform and `all_platforms`."""
    if platform is not None and all_platforms:
        raise UsageError("--platform and --all-platforms exclude each other",
                         hint="--all-platforms keeps every platform of the index")
    ref = parse_reference(reference)
    connection = connection or Connection()
    display = display or TransferDisplay(quiet=True)
    data, media_type, top = _top(connection, ref, display)
    if media_type not in oci.INDEX_TYPES:
        return _single(store, ref, platform, connection, display, jobs)
    index = oci.Index.from_bytes(data, f"index {top}")
    with store.lock(exclusive=False):  # prune waits: the pulled manifests are untagged
        if all_platforms:
            result = _whole(store, ref, index, connection, display, jobs)
        else:
            result = _one(store, ref, index, platform or Platform.host(), connection,
                          display, jobs)
        name = local_name(ref)
        store.tag(name, result.local)
    return replace(result, reference=ref.with_digest(top) if ref.digest is None else ref,
                   digest=top, manifest_digest=result.manifest_digest or top, name=name)


def _top(connection: Connection, ref: Reference, display: TransferDisplay
         ) -> tuple[bytes, str, str]:
    """The document `ref` names (data, media type, digest), from the first endpoint that
    serves it (mirrors first; a mirror that fails is skipped with a note, and named in the
    registry's error when every source fails, as a pull does)."""
    endpoints = connection.pull_endpoints(ref.registry, ref.repository,
                                          by_digest=ref.digest is not None)
    return first_serving(endpoints, connection, display, lambda registry, endpoint:
                         registry.get_manifest(endpoint.repository, ref.identifier))


def _single(store: Store, ref: Reference, platform: Platform | None, connection: Connection,
            display: TransferDisplay, jobs: int) -> PullResult:
    """A single image: pulled untagged, its platform checked, then tagged."""
    with store.lock(exclusive=False):
        result = pull(store, str(ref), connection=connection, display=display, jobs=jobs,
                      tag=False)
        entry_for(store, result.local, str(ref), platform)  # PlatformNotFound
        name = local_name(ref)
        store.tag(name, result.local)
    return replace(result, name=name)


def _one(store: Store, ref: Reference, index: oci.Index, platform: Platform,
         connection: Connection, display: TransferDisplay, jobs: int) -> PullResult:
    """The entry of `platform`, pulled by digest (untagged)."""
    entry: oci.Descriptor | None = select(
        [e for e in index.manifests if e.media_type in oci.MANIFEST_TYPES], platform)
    if entry is None:
        raise PlatformNotFound(str(ref), str(platform), index_platforms(index))
    return pull(store, str(ref.with_digest(entry.digest)), connection=connection,
                display=display, jobs=jobs, tag=False)


def _whole(store: Store, ref: Reference, index: oci.Index, connection: Connection,
           display: TransferDisplay, jobs: int) -> PullResult:
    """Every entry pulled by digest, then the index of their local manifests (untagged)."""
    pulled = []
    for entry in index.manifests:
        if entry.media_type not in oci.MANIFEST_TYPES or not entry.platform:
            raise UsageError(f"{ref}: index entry {entry.digest} is no image of a platform"
                             f" ({entry.media_type})", hint="pull it with --platform")
        pulled.append(pull(store, str(ref.with_digest(entry.digest)), connection=connection,
                           display=display, jobs=jobs, tag=False))
    local = store.put_index([p.local for p in pulled], index.annotations)
    layers = tuple(d for p in pulled for d in p.layers)
    return PullResult(ref, "", "", local, None, sum(p.downloaded for p in pulled),
                      sum(p.present for p in pulled), layers, pulled[0].source)
