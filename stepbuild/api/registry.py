"""`push` and `pull` (a store's images to and from registries), and `images` (what the store
holds): what `stepbuild push`, `pull` and `images` run.

Registries are reached as `connection` says (`Connection`: auth file, TLS verification, CA
file, retries, stall timeout, registry rules; None: `default_connection()`, the CLI's).
Transfers are events (`transfer`, `notice`) for `on_event`, and the plain log of them goes
to `stream` (None: nowhere), never to stdout; errors are raised (`RegistryError`,
`InvalidReference`, `ImageNotFound`, ...) after `build.error`, as a build's are.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from stepbuild.api.build import caller_progress, open_store
from stepbuild.api.request import default_connection
from stepbuild.errors import StepbuildError, UsageError

if TYPE_CHECKING:
    from stepbuild.distribution.connection import Connection
    from stepbuild.distribution.display import TransferDisplay
    from stepbuild.oci.platform import Platform
    from stepbuild.progress import Progress
    from stepbuild.progress.events import EventCallback

__all__ = ["ImageInfo", "PullResult", "PushResult", "images", "pull", "push"]


@dataclass(frozen=True, slots=True)
class PushResult:
    """`reference`: where the image went, with the digest (`registry/repo:tag@sha256:…`);
    `digest`: the manifest digest the registry now serves it under; `size`: the manifest's
    size in bytes; `uploaded`, `mounted`, `existing`: how many blobs were sent, mounted from
    another repository of the registry, or there already."""

    reference: str
    digest: str
    size: int
    uploaded: int
    mounted: int
    existing: int


@dataclass(frozen=True, slots=True)
class PullResult:
    """`reference`: what was pulled, with the digest the registry gave; `digest`: that digest
    (an index's, for a multi-platform image); `manifest_digest`: the image manifest's digest
    in the registry (the chosen platform's); `local_digest`: the manifest digest in the store
    (layers are kept uncompressed there, so it may differ); `name`: the store's tag for it
    (None: not tagged, as a pull by digest alone); `downloaded`: layers fetched."""

    reference: str
    digest: str
    manifest_digest: str
    local_digest: str
    name: str | None
    downloaded: int


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """A tagged image of the store: its name, local manifest digest (an image index's, for
    a multi-platform image) and layers' size (of every platform's, each layer once)."""

    name: str
    digest: str
    size: int


def push(image: str, destination: str | None = None, *,
         root: str | os.PathLike[str] | None = None, connection: Connection | None = None,
         compression: str = "gzip", on_event: EventCallback | None = None,
         stream: TextIO | None = None, progress: Progress | None = None,
         platform: str | None = None) -> PushResult:
    """Push `image` (a tag or digest in the store at `root`) to `destination`
    (`REGISTRY/REPOSITORY[:TAG]`; default: `image` read as a reference). `on_event` gets
    its `transfer` and `notice` events, `stream` the plain log of them; `progress`: a view
    of the caller's own instead (the CLI's). An image index is pushed whole (each
    platform's manifest, then the index under the tag), unless `platform`
    (`os/arch[/variant]`) picks one of its images."""
    from stepbuild.distribution.push import push as push_image

    with _reporting(progress, on_event, stream) as told:
        result = push_image(open_store(root), image, destination, compression=compression,
                            connection=connection or default_connection(),
                            display=_display(told), platform=_platform(platform))
    return PushResult(str(result.reference), result.digest, result.size,
                      result.count("uploaded"), result.count("mounted"),
                      result.count("exists"))


def pull(reference: str, *, root: str | os.PathLike[str] | None = None,
         connection: Connection | None = None, on_event: EventCallback | None = None,
         stream: TextIO | None = None, progress: Progress | None = None,
         platform: str | None = None, all_platforms: bool = False) -> PullResult:
    """Pull `reference` (`[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`) into the store at `root`
    and tag it there; events, `stream` and `progress` as for `push`. Needs what a build
    needs to write layer dirs (docs/api.md). Of an image index, the image of `platform`
    (`os/arch[/variant]`; None: this machine's) is pulled, or with `all_platforms` every
    image, kept as an index (`local_digest` is then the local index's)."""
    from stepbuild.distribution.pull_index import pull_platforms

    with _reporting(progress, on_event, stream) as told:
        result = pull_platforms(open_store(root, layers=True), reference,
                                platform=_platform(platform), all_platforms=all_platforms,
                                connection=connection or default_connection(),
                                display=_display(told))
    return PullResult(str(result.reference), result.digest, result.manifest_digest,
                      result.local.digest, result.name, result.downloaded)


@contextmanager
def _reporting(progress: Progress | None, on_event: EventCallback | None,
               stream: TextIO | None) -> Iterator[Progress]:
    """The caller's Progress, or one of this call's (closed with it); a failure is
    `build.error` to it before it is raised, as a build's is."""
    own = progress is None
    told = caller_progress(on_event, stream) if progress is None else progress
    try:
        yield told
    except StepbuildError as exc:
        told.build_failed(exc.render(), exc.exit_code)
        raise
    finally:
        if own:
            told.close()


def images(*, root: str | os.PathLike[str] | None = None) -> list[ImageInfo]:
    """The tagged images of the store at `root`, sorted by name."""
    from stepbuild.store.images import summary

    store = open_store(root)
    return [ImageInfo(name, descriptor.digest, summary(store, descriptor)[0])
            for name, descriptor in sorted(store.images())]


def _platform(text: str | None) -> Platform | None:
    """One platform from its text (`UsageError` for anything else); None stays None."""
    from stepbuild.oci.platform import parse_platforms

    if text is None:
        return None
    platforms = parse_platforms([text])
    if len(platforms) != 1:
        raise UsageError(f"platform {text!r}: one platform here, not {len(platforms)}",
                         hint="e.g. linux/arm64")
    return platforms[0]


def _display(progress: Progress) -> TransferDisplay:
    """Transfers as events of `progress`; notes (a mirror skipped) shown unless quiet."""
    from stepbuild.distribution.display import TransferDisplay

    return TransferDisplay(progress.emit, verbose=not progress.quiet)
