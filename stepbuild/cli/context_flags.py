"""`stepbuild build`'s contexts from elsewhere: `-`, git and http(s) URLs, and --build-context.

`fetched(options)` wraps a build: it makes the context argument, when it is not a directory
(`sources/remote.py`), a directory under the store's tmp/, and so every --build-context that
is a URL; points `options.context` (and `-f`, which then names a file inside that context, as
in docker) at it; parses --build-context into `options.named_contexts` for `BuildOptions`;
and removes what it fetched when the build ends, whatever the ending (an error, SIGTERM:
cli/main.py unwinds with `Terminated`). A builder killed with SIGKILL leaves it to the next
command that locks the store (its names carry the owner tag: store/stale.py). The store lock
is held shared all along, so `stepbuild prune` cannot remove a context while it is read.

Builds with a fetched context are never replayed by the no-op fingerprint (`cli/noop.py`:
`options.fetched_context`); builds that use a named context report it as read from outside
(`build/named.py`), which has the same effect.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from stepbuild.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Callable

    from stepbuild.sources.named import NamedContext
    from stepbuild.sources.remote import Fetched
    from stepbuild.store.store import Store

__all__ = ["add_arguments", "fetched"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--build-context", action="append", default=[],
                        metavar="NAME=PATH|docker-image://REF|oci-layout://DIR[:TAG|@DIGEST]",
                        help="a named context for FROM NAME and COPY --from=NAME, replacing"
                             " the stage or image of that name (repeatable); a directory, an"
                             " image (found or pulled), an OCI layout dir, or a git or"
                             " http(s) URL")


@contextmanager
def fetched(options: argparse.Namespace, open_store: Callable[[], Store]) -> Iterator[None]:
    """Around a build: fetch the contexts that are not local directories, as the module
    docstring says; remove them on the way out. UsageError for bad --build-context values
    and for standard input asked for twice (context `-` and `-f -`)."""
    from stepbuild.sources import named as named_contexts
    from stepbuild.sources import remote

    named = named_contexts.parse_all(getattr(options, "build_context", None) or [])
    kind = remote.kind(options.context)
    if kind == "stdin" and options.file == "-":
        raise UsageError("the context and the Stepfile cannot both come from standard input",
                         hint="give the context as a directory, or -f a file in the tar")
    if kind == "stdin" and (sys.stdin is None or sys.stdin.isatty()):
        raise UsageError("the build context is '-' but standard input is a terminal",
                         hint="stepbuild build - < context.tar (or < Stepfile)")
    to_fetch = [n for n in named.values() if n.kind in ("git", "url")]
    for context in named.values():
        if context.kind == "path" and not Path(context.value).is_dir():
            raise UsageError(f"--build-context {context.name}={context.value}: not a directory")
    if kind == "dir" and not to_fetch:
        options.named_contexts = named
        yield
        return
    store = open_store()
    with ExitStack() as cleanup:
        cleanup.enter_context(store.lock(exclusive=False))
        if kind != "dir":
            _use_main(options, _fetch(store, options.context, cleanup))
        for context in to_fetch:
            where = _fetch(store, context.value, cleanup)
            named[context.name] = _as_path(context, where)
        options.named_contexts = named
        yield


def _fetch(store: Store, context: str, cleanup: ExitStack) -> Fetched:
    """`context` made a directory under the store's tmp/, removed when `cleanup` closes."""
    from stepbuild.fs.trees import remove_tree
    from stepbuild.sources.remote import fetch

    work = store.tmp_dir("context-")
    cleanup.callback(remove_tree, work, best_effort=True)
    return fetch(context, work, stdin=None if sys.stdin is None else sys.stdin.buffer)


def _use_main(options: argparse.Namespace, where: Fetched) -> None:
    """Build in the fetched context: `-f` names a file in it; a Stepfile that came instead of
    a tar is the Stepfile (then -f has nothing to name)."""
    options.fetched_context = where.label  # cli/noop.py: never replayed
    options.context = str(where.root)
    if where.stepfile is not None:
        if options.file is not None:
            raise UsageError(f"-f {options.file}: {where.label} is a Stepfile, not a tar of a"
                             " context", hint="leave -f out")
        options.file = str(where.stepfile)
    elif options.file is not None:
        options.file = str(where.root / _inside(options.file, where.label))
    else:
        from stepbuild.frontend.source import STEPFILE_NAMES

        if not any((where.root / name).is_file() for name in STEPFILE_NAMES):
            raise UsageError(f"no {' or '.join(STEPFILE_NAMES)} at the top of {where.label}",
                             hint="name the Stepfile in it with -f PATH")


def _inside(file: str, label: str) -> str:
    """-f for a fetched context: a path relative to its root (docker's rule), kept inside."""
    path = posixpath.normpath(file.lstrip("/"))
    if path == ".." or path.startswith("../") or "\0" in path:
        raise UsageError(f"-f {file}: outside {label}", hint="-f names a file inside it")
    return path


def _as_path(context: NamedContext, where: Fetched) -> NamedContext:
    from dataclasses import replace

    if where.stepfile is not None:
        raise UsageError(f"--build-context {context.name}: {where.label} is a file, not a tar"
                         " or a repository")
    return replace(context, kind="path", value=os.fspath(where.root))
