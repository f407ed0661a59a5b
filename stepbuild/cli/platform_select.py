"""`--platform P` of the commands that use one image of a name: run, inspect, history,
export, push, pull.

One platform (`os/arch[/variant]`, oci/platform.py's forms); the image a name gives for it
is `store/images.image_for`'s choice (an index → that platform's entry, else this
machine's). `build --platform` takes several and is build_flags' business, not this.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from stepbuild.errors import UsageError

if TYPE_CHECKING:
    from stepbuild.oci.documents import Descriptor
    from stepbuild.oci.platform import Platform
    from stepbuild.store.store import Store

__all__ = ["add_argument", "chosen", "image"]


def add_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """Add `--platform P`; `what` ends its help ("which image of an index to run")."""
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                        help=f"{what} (e.g. linux/arm64; default: this machine's)")


def chosen(options: argparse.Namespace) -> Platform | None:
    """The platform --platform names, None when not given; `UsageError` for anything that
    is not exactly one platform."""
    from stepbuild.oci.platform import parse_platforms

    text = getattr(options, "platform", None)
    if text is None:
        return None
    platforms = parse_platforms([text])
    if len(platforms) != 1:
        raise UsageError(f"--platform {text!r}: one platform here, not {len(platforms)}",
                         hint="e.g. --platform linux/arm64")
    return platforms[0]


def image(store: Store, name: str, options: argparse.Namespace) -> Descriptor:
    """The image manifest `name` gives for --platform (store/images.image_for)."""
    from stepbuild.store.images import image_for

    return image_for(store, name, chosen(options))
