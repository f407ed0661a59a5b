"""`push` and `pull` (a store's images to and from registries), and `images` (what the store
holds): what `stepbuild push`, `pull` and `images` run.

Registries are reached as `connection` says (`Connection`: auth file, TLS verification, CA
file, retries, stall timeout, registry rules; None: `default_connection()`, the CLI's).
Progress goes to `stream` (one line per blob; None: nowhere), never to stdout; errors are
raised (`RegistryError`, `InvalidReference`, `ImageNotFound`, ...).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from stepbuild.api.build import open_store
from stepbuild.api.request import default_connection

if TYPE_CHECKING:
    from stepbuild.distribution.connection import Connection
    from stepbuild.distribution.display import TransferDisplay

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
    """A tagged image of the store: its name, local manifest digest and layers' size."""

    name: str
    digest: str
    size: int


def push(image: str, destination: str | None = None, *, root: str | os.PathLike[str] | None = None,
         connection: Connection | None = None, compression: str = "gzip",
         stream: TextIO | None = None) -> PushResult:
    """Push `image` (a tag or digest in the store at `root`) to `destination`
    (`REGISTRY/REPOSITORY[:TAG]`; default: `image` read as a reference)."""
    from stepbuild.distribution.push import push as push_image

    result = push_image(open_store(root), image, destination, compression=compression,
                        connection=connection or default_connection(),
                        display=display(stream))
    return PushResult(str(result.reference), result.digest, result.size,
                      result.count("uploaded"), result.count("mounted"),
                      result.count("exists"))


def pull(reference: str, *, root: str | os.PathLike[str] | None = None,
         connection: Connection | None = None, stream: TextIO | None = None) -> PullResult:
    """Pull `reference` (`[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`) into the store at `root`
    and tag it there. Needs what a build needs to write layer dirs (docs/api.md)."""
    from stepbuild.distribution.pull import pull as pull_image

    result = pull_image(open_store(root, layers=True), reference,
                        connection=connection or default_connection(),
                        display=display(stream))
    return PullResult(str(result.reference), result.digest, result.manifest_digest,
                      result.local.digest, result.name, result.downloaded)


def images(*, root: str | os.PathLike[str] | None = None) -> list[ImageInfo]:
    """The tagged images of the store at `root`, sorted by name."""
    store = open_store(root)
    found = []
    for name, descriptor in sorted(store.images()):
        manifest = store.manifest(descriptor)
        found.append(ImageInfo(name, descriptor.digest,
                               sum(layer.size for layer in manifest.layers)))
    return found


def display(stream: TextIO | None, *, quiet: bool = False) -> TransferDisplay:
    """Transfer lines to `stream` (None: nowhere)."""
    from stepbuild.distribution.display import TransferDisplay

    if stream is None:
        return TransferDisplay(io.StringIO(), quiet=True)
    return TransferDisplay(stream, quiet=quiet, verbose=not quiet)  # notes: a mirror skipped
