"""Where a build's result goes: its outputs, names, pushes, labels and annotations, as a plan.

`plan(...)` reads every one of them before the build starts, so that a bad value fails at
once (a `UsageError` naming the flag), and says what the build does after it:

- `files`: the outputs `archive/export.py` writes (at most one to standard output: then
  `stdout` is true and nothing else of the build goes to stdout; the CLI prints the digest
  on stderr, as buildx does);
- `tags`: the -t names and the names of `type=image`/`type=registry` outputs (the store gets
  them all, as a build tags its -t names);
- `pushes`: the registry references to push to: every -t name with `--push`, and the names
  of `type=image,push=true` and `type=registry` outputs (their `name=`s, else the -t names);
- `labels` and `annotations` (oci/annotations.py says where each kind goes).

Moved here from cli/output_flags.py (which now calls it), so that `stepbuild.api` and the
command line plan alike.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stepbuild.errors import UsageError

if TYPE_CHECKING:  # imported when used: `build`'s no-op path imports this module
    from stepbuild.archive.outputs import Output
    from stepbuild.oci.annotations import Annotations

__all__ = ["LAYOUT_TYPES", "OutputPlan", "checked_files", "plan"]

LAYOUT_TYPES = frozenset({"oci", "oci-layout"})  # the outputs that write an index.json


@dataclass(frozen=True, slots=True)
class OutputPlan:
    """What a build does with its result (see the module docstring)."""

    files: list[Output]
    tags: tuple[str, ...]
    pushes: list[str]
    stdout: bool
    labels: dict[str, str]
    annotations: Annotations


def plan(outputs: Sequence[str], tags: Sequence[str], *, push: bool = False,
         labels: Sequence[str] = (), annotations: Sequence[str] = ()) -> OutputPlan:
    """The plan of --output values, -t names, --push, --label and --annotation values;
    `UsageError` for anything wrong in them."""
    from stepbuild.archive.outputs import parse_output
    from stepbuild.oci.annotations import parse_annotations, parse_labels

    parsed = [parse_output(value) for value in outputs]
    files = checked_files([o for o in parsed if not o.is_image])
    images = [o for o in parsed if o.is_image]
    names = list(tags)
    pushes = _push_targets(push, tags)
    for output in images:
        given = list(output.names or tags)
        if not given:
            raise UsageError(f"--output type={output.type} needs a name",
                             hint=f"type={output.type},name=REGISTRY/REPOSITORY:TAG, or -t")
        names += given
        pushes += given if output.push else []
    for name in pushes:
        _check_reference(name)
    annotated = parse_annotations(list(annotations))
    if annotated.for_layouts() and not any(o.type in LAYOUT_TYPES for o in files):
        raise UsageError("--annotation index: and manifest-descriptor: need an oci or"
                         " oci-layout output: only those write an index.json",
                         hint="add -o type=oci,dest=image.tar (buildx refuses index"
                              " annotations for a single-platform image)")
    return OutputPlan(files, tuple(dict.fromkeys(names)), list(dict.fromkeys(pushes)),
                      any(o.to_stdout for o in files), parse_labels(list(labels)), annotated)


def checked_files(outputs: list[Output]) -> list[Output]:
    """File outputs with their destinations checked (at most one on stdout, never a
    terminal)."""
    from stepbuild.archive.export import check_destination, check_outputs

    check_outputs(outputs, stdout_is_terminal=sys.stdout.isatty())
    for output in outputs:
        check_destination(output)
    return outputs


def _push_targets(push: bool, tags: Sequence[str]) -> list[str]:
    """`build --push`: the -t names (each checked as a registry reference in `plan`)."""
    if not push:
        return []
    if not tags:
        raise UsageError("--push needs a name to push to",
                         hint="add -t REGISTRY/REPOSITORY:TAG")
    return list(tags)


def _check_reference(name: str) -> None:
    from stepbuild.distribution.reference import parse_reference

    parse_reference(name)
