"""Which store image a name means, and the name a pulled image gets.

Push, tag and FROM look an image up by what the user wrote (`busybox`), though a pull tagged
it with the reference's familiar form (`busybox:latest`); both forms are tried here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepbuild.distribution.reference import Reference, parse_reference
from stepbuild.errors import ImageNotFound, InvalidReference

if TYPE_CHECKING:
    from stepbuild.oci import documents as oci
    from stepbuild.store.store import Store

__all__ = ["find_local", "local_name", "other_local_names"]


def find_local(store: Store, name: str) -> oci.Descriptor:
    """The image `name` names in the store: as written (a tag, a digest, a digest prefix),
    else as a normalised reference (`busybox` → `busybox:latest`). `ImageNotFound`."""
    found = store.resolve(name)
    if found is not None:
        return found
    for candidate in other_local_names(name):
        found = store.resolve(candidate)
        if found is not None:
            return found
    raise ImageNotFound(name, hint="stepbuild images lists them")


def other_local_names(name: str) -> list[str]:
    """The names other than `name` that an image pulled as `name` may be tagged with: the
    reference's familiar and full forms (none when `name` is no reference)."""
    try:
        ref = parse_reference(name)
    except InvalidReference:
        return []
    return list(dict.fromkeys(n for n in (ref.familiar(), str(ref)) if n != name))


def local_name(ref: Reference) -> str:
    """The tag a pulled image gets: Docker's familiar form of the reference."""
    return ref.familiar()
