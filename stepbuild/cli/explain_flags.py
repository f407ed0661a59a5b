"""`stepbuild build --explain` and `stepbuild why [IMAGE]`: why steps missed the cache.

Every build works out why each step that ran missed the cache (build/explainer.py) and keeps
it with the last build of each tag (store/explain.py); a hit computes nothing. `--explain`
shows it: a `why:` line under each DONE line of the plain log, and `reason` on the rawjson
`step.done` event. `why` prints it after the fact, for the last build of IMAGE (a -t name),
or of the store when IMAGE is left out.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from stepbuild.errors import StepbuildError

if TYPE_CHECKING:
    from stepbuild.progress import Progress

WHY_HELP = "say why each step of the last build of IMAGE ran (missed the cache)"


def add_arguments(build: argparse.ArgumentParser) -> None:
    build.add_argument("--explain", action="store_true",
                       help="say under each step that ran why it missed the cache (-v: every"
                            " file that changed)")


def apply(options: argparse.Namespace, progress: Progress) -> None:
    """--explain: the build's step.done events carry their reason."""
    progress.explain = bool(getattr(options, "explain", False))


def add_command(commands: Any) -> None:
    """The `why` subcommand (`commands`: the subparsers of cli/main.py)."""
    why_parser = commands.add_parser("why", help=WHY_HELP, description=WHY_HELP)
    why_parser.add_argument("image", nargs="?",
                            help="a name the image was built with (-t); default: the last"
                                 " build in the store")
    why_parser.add_argument("-v", "--verbose", action="store_true",
                            help="name every file that changed")
    why_parser.set_defaults(run=why)


def why(options: argparse.Namespace) -> int:
    from stepbuild.store.explain import LAST, ExplainRecords
    from stepbuild.store.layout import store_root
    from stepbuild.store.store import Store

    records = ExplainRecords(Store(store_root(options.root)))
    name = options.image
    build = None
    for candidate in _names(name) if name else [LAST]:
        build = records.last_build(candidate)
        if build is not None:
            break
    if build is None:
        what = f"of {name!r}" if name else "in this store"
        raise StepbuildError(f"no build {what} is known", hint="build it with stepbuild build"
                             " -t NAME first; `why` explains the last build of a -t name")
    for line in why_lines(build, verbose=options.verbose):
        print(line)
    return 0


def _names(name: str) -> list[str]:
    """`app` was perhaps built as `app:latest`, and the other way round."""
    if name.endswith(":latest"):
        return [name, name.removesuffix(":latest")]
    return [name] if ":" in name.rsplit("/", 1)[-1] else [name, f"{name}:latest"]


def why_lines(build: dict[str, Any], *, verbose: bool = False) -> list[str]:
    """The lines `why` prints of a saved build: one per cached step, `CACHED` or its reason."""
    filename = build.get("filename", "Stepfile")
    lines = [f"last build: {build.get('image', '?')} ({filename})"]
    for step in build.get("steps", []):
        label = f"[{step['label']}] " if step.get("label") else ""
        where = f"{filename}:{step.get('line')} {step.get('text', '')}"
        reason = (step.get("detail") if verbose else None) or step.get("reason")
        lines.append(f"{label}{where} — {'CACHED' if step.get('cached') else reason}")
    return lines
