"""`--platform` of `stepbuild build`: the platforms to build, as buildx takes them.

`add_arguments(build)` adds the flag (repeatable, each a comma-separated list);
`platforms(options)` gives the values as written, which `BuildRequest.check` parses
(oci/platform.parse_platforms): a value that is no platform is a usage error naming the flag,
before anything is read or built. Cheap to import: argparse only.
"""

from __future__ import annotations

import argparse


def add_arguments(build: argparse.ArgumentParser) -> None:
    build.add_argument("--platform", action="append", default=[],
                       metavar="OS/ARCH[/VARIANT][,...]",
                       help="the platforms to build (repeatable, or comma-separated; default:"
                            " this machine's); several give an image index of one image each")


def platforms(options: argparse.Namespace) -> tuple[str, ...]:
    """The --platform values as given (each may be a comma-separated list)."""
    return tuple(getattr(options, "platform", None) or ())
