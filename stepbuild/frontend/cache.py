"""A cache of parsed Stepfiles, so that an unchanged Stepfile is not parsed again.

A no-op rebuild must stay under 0.1 s (docs/architecture.md, "Performance budget"); importing
lark and parsing take about a third of that. The parsed `Stepfile` (frozen dataclasses) is pickled
under the store root, keyed by the file's name and text and by the parser's own source files
(so a changed parser never serves stale results). Pickle is safe here only because the store
is private to its owner (0700, like everything under it): never point this at a shared dir.
A cache file that cannot be read is ignored and rewritten.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import xxhash

from stepbuild import __version__
from stepbuild.frontend.instructions import Stepfile

# The modules whose behaviour decides what a parse returns.
# Paths relative to the stepbuild package.
_PARSER_FILES = ("frontend/parse.py", "frontend/lines.py", "frontend/syntax.py",
                 "frontend/convert.py", "frontend/flags.py", "frontend/instructions.py",
                 "grammar/stepfile.lark")


def parse_cached(cache_dir: Path, text: str, name: str) -> Stepfile:
    """`parse.parse(text, name)`, served from `cache_dir` when it was parsed before."""
    path = cache_dir / f"{_key(text, name)}.pickle"
    try:
        cached = pickle.loads(path.read_bytes())
        if isinstance(cached, Stepfile):
            return cached
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError,
            TypeError, ValueError):
        pass
    from stepbuild.frontend.parse import parse

    stepfile = parse(text, name)
    _write(path, pickle.dumps(stepfile, protocol=pickle.HIGHEST_PROTOCOL))
    return stepfile


def _key(text: str, name: str) -> str:
    here = Path(__file__).parents[1]
    hasher = xxhash.xxh3_128()
    hasher.update(f"{__version__}\0{name}\0".encode())
    for file in _PARSER_FILES:
        info = os.stat(here / file)
        hasher.update(f"{file}:{info.st_size}:{info.st_mtime_ns}\0".encode())
    hasher.update(text.encode("utf-8", "surrogatepass"))
    return hasher.hexdigest()


def _write(path: Path, data: bytes) -> None:
    from stepbuild.fs.durable import write_file  # not at the top: a cache hit writes nothing

    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        write_file(path, data, None, durable=False)
    except OSError:
        pass  # a cache that cannot be written only costs the next parse
