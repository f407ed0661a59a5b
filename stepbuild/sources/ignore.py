"""Which ignore file applies to a build, and its patterns.

Docker's rules, with stepbuild's own names first and Buildah's between: a file beside the
build file named after it (`Stepfile.stepignore`, `Containerfile.containerignore`,
`Dockerfile.dockerignore`, `app.Stepfile.stepignore`...) wins; else the context's
`.stepignore`, else its `.containerignore` (Buildah and Podman read it before
`.dockerignore`), else its `.dockerignore`. Ignored files are never read or hashed, so
changing them never misses the cache (context.py applies the patterns).
"""

from __future__ import annotations

from pathlib import Path

from stepbuild.sources.patterns import read_ignore_file


def candidates(context: Path, stepfile: Path | None) -> list[Path]:
    """Where an ignore file may be, in the order the first one found applies."""
    found: list[Path] = []
    if stepfile is not None:
        found += [stepfile.with_name(stepfile.name + suffix) for suffix in SUFFIXES]
    return found + [context / suffix for suffix in SUFFIXES]


SUFFIXES = (".stepignore", ".containerignore", ".dockerignore")  # in the order they win


def ignore_file(context: Path, stepfile: Path | None) -> Path | None:
    """The ignore file that applies, or None."""
    return next((path for path in candidates(context, stepfile) if path.is_file()), None)


def ignore_patterns(context: Path, stepfile: Path | None) -> list[str]:
    """The patterns of the applicable ignore file (none: an empty list)."""
    path = ignore_file(context, stepfile)
    if path is None:
        return []
    return read_ignore_file(path.read_text(encoding="utf-8", errors="replace"))
