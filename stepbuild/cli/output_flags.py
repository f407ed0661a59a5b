"""Where a build's result goes: `-o`/`--output` (as a plan), `--label`, `--annotation`, and
`images --digests`' argument.

`plan(options)` reads every one of them before the build starts, so that a bad value fails
at once (a `UsageError` naming the flag), and says what `_full_build` does after the build:

- `files`: the outputs `archive/export.py` writes (at most one to standard output: then
  `stdout` is true and nothing else of the build goes to stdout; the digest is printed on
  stderr, as buildx does);
- `tags`: the -t names and the names of `type=image`/`type=registry` outputs (the store gets
  them all, as a build tags its -t names);
- `pushes`: the registry references to push to: every -t name with `--push`, and the names
  of `type=image,push=true` and `type=registry` outputs (their `name=`s, else the -t names);
- `labels` and `annotations` (oci/annotations.py says where each kind goes).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stepbuild.errors import UsageError

if TYPE_CHECKING:  # imported when used: `build`'s no-op path imports this module
    from stepbuild.archive.outputs import Output
    from stepbuild.oci.annotations import Annotations

__all__ = ["OutputPlan", "add_arguments", "add_images_arguments", "file_outputs", "plan"]

LAYOUT_TYPES = frozenset({"oci", "oci-layout"})  # the outputs that write an index.json


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


@dataclass(frozen=True, slots=True)
class OutputPlan:
    """What a build does with its result (see the module docstring)."""

    files: list[Output]
    tags: tuple[str, ...]
    pushes: list[str]
    stdout: bool
    labels: dict[str, str]
    annotations: Annotations


def plan(options: argparse.Namespace) -> OutputPlan:
    """The plan of `stepbuild build`'s options; `UsageError` for anything wrong in them."""
    from stepbuild.archive.outputs import parse_output
    from stepbuild.oci.annotations import parse_annotations, parse_labels

    outputs = [parse_output(value) for value in getattr(options, "output", None) or []]
    files = _checked_files([o for o in outputs if not o.is_image])
    images = [o for o in outputs if o.is_image]
    tags = list(options.tag)
    pushes = _push_targets(options)
    for output in images:
        names = list(output.names or options.tag)
        if not names:
            raise UsageError(f"--output type={output.type} needs a name",
                             hint=f"type={output.type},name=REGISTRY/REPOSITORY:TAG, or -t")
        tags += names
        pushes += names if output.push else []
    for name in pushes:
        _check_reference(name)
    annotations = parse_annotations(getattr(options, "annotation", None) or [])
    if annotations.for_layouts() and not any(o.type in LAYOUT_TYPES for o in files):
        raise UsageError("--annotation index: and manifest-descriptor: need an oci or"
                         " oci-layout output: only those write an index.json",
                         hint="add -o type=oci,dest=image.tar (buildx refuses index"
                              " annotations for a single-platform image)")
    return OutputPlan(files, tuple(dict.fromkeys(tags)), list(dict.fromkeys(pushes)),
                      any(o.to_stdout for o in files),
                      parse_labels(getattr(options, "label", None) or []), annotations)


def file_outputs(options: argparse.Namespace) -> list[Output]:
    """`stepbuild export`'s outputs: files only (`type=image`/`registry` are build's)."""
    from stepbuild.archive.outputs import parse_output

    outputs = [parse_output(value) for value in options.output]
    for output in outputs:
        if output.is_image:
            raise UsageError(f"--output type={output.type} is a build output",
                             hint="stepbuild tag IMAGE NAME, or stepbuild push IMAGE REF")
    return _checked_files(outputs)


def _checked_files(outputs: list[Output]) -> list[Output]:
    from stepbuild.archive.export import check_destination, check_outputs

    check_outputs(outputs, stdout_is_terminal=sys.stdout.isatty())
    for output in outputs:
        check_destination(output)
    return outputs


def _push_targets(options: argparse.Namespace) -> list[str]:
    """`build --push`: the -t names (each checked as a registry reference in `plan`)."""
    if not getattr(options, "push", False):
        return []
    if not options.tag:
        raise UsageError("--push needs a name to push to",
                         hint="add -t REGISTRY/REPOSITORY:TAG")
    return list(options.tag)


def _check_reference(name: str) -> None:
    from stepbuild.distribution.reference import parse_reference

    parse_reference(name)
