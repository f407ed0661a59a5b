"""Where a build's result goes: `-o`/`--output` (as a plan), `--label`, `--annotation`, and
`images --digests`' argument.

`plan(options)` reads every one of them before the build starts, so that a bad value fails
at once (a `UsageError` naming the flag): `api/outputs.py` makes the plan (what the build
does with its result), for the command line and Python callers alike.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from stepbuild.errors import UsageError

if TYPE_CHECKING:  # imported when used: `build`'s no-op path imports this module
    from stepbuild.api.outputs import OutputPlan
    from stepbuild.archive.outputs import Output

__all__ = ["add_arguments", "add_images_arguments", "file_outputs", "plan"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`build --label` and `--annotation`."""
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help="set a label of the image's config, over the Stepfile's LABELs"
                             " (repeatable); changes the config only: no step runs again")
    parser.add_argument("--annotation", action="append", default=[],
                        metavar="[TYPE:]KEY=VALUE",
                        help="add an OCI annotation (repeatable); TYPE manifest (default: the"
                             " image manifest, local and pushed), manifest-descriptor (the"
                             " index.json entries of oci/oci-layout outputs) or index (that"
                             " index.json itself)")


def add_images_arguments(parser: argparse.ArgumentParser) -> None:
    """`images --digests`."""
    parser.add_argument("--digests", action="store_true",
                        help="show each image's full local manifest digest and the registry"
                             " digest it was pushed as, per reference")


def plan(options: argparse.Namespace) -> OutputPlan:
    """The plan of `stepbuild build`'s options (api/outputs.py); `UsageError` for anything
    wrong in them."""
    from stepbuild.api.outputs import plan as plan_of

    return plan_of(getattr(options, "output", None) or [], options.tag,
                   push=getattr(options, "push", False),
                   labels=getattr(options, "label", None) or [],
                   annotations=getattr(options, "annotation", None) or [])


def file_outputs(options: argparse.Namespace) -> list[Output]:
    """`stepbuild export`'s outputs: files only (`type=image`/`registry` are build's)."""
    from stepbuild.archive.outputs import parse_output

    outputs = [parse_output(value) for value in options.output]
    for output in outputs:
        if output.is_image:
            raise UsageError(f"--output type={output.type} is a build output",
                             hint="stepbuild tag IMAGE NAME, or stepbuild push IMAGE REF")
    from stepbuild.api.outputs import checked_files

    return checked_files(outputs)
