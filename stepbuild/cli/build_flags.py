"""docker's small conventions on `stepbuild build`: `--no-cache-filter` and the `-t` check.

`add_arguments(build)` adds the flags; `check(options)` runs first in `commands.build`, so a
bad `-t` fails before anything is read or built (docker checks its tags before it sends the
context, too). Cheap to import: the reference parser is the only thing it loads.
"""

from __future__ import annotations

import argparse

from stepbuild.errors import InvalidReference, UsageError


def add_arguments(build: argparse.ArgumentParser) -> None:
    build.add_argument("--no-cache-filter", action="append", default=[], metavar="STAGE",
                       help="run the steps of this stage again, without a cache lookup,"
                            " while other stages use the cache (repeatable, or STAGE,STAGE)")


def check(options: argparse.Namespace) -> None:
    """Validate `-t` and split `--no-cache-filter` (into `options.no_cache_filter`)."""
    check_tags(getattr(options, "tag", []))
    options.no_cache_filter = no_cache_filter(getattr(options, "no_cache_filter", []))


def no_cache_filter(values: list[str]) -> tuple[str, ...]:
    """The stages of every --no-cache-filter, comma-separated lists split as buildx does."""
    stages: list[str] = []
    for value in values:
        names = [name.strip() for name in value.split(",")]
        if not all(names):
            raise UsageError(f"invalid --no-cache-filter {value!r}: an empty stage name",
                             hint="--no-cache-filter STAGE[,STAGE...]")
        stages += [name for name in names if name not in stages]
    return tuple(stages)


def check_tags(tags: list[str]) -> None:
    """Each -t must be an image name as docker reads one: `[HOST[:PORT]/]REPO[:TAG]`, the
    repository lower case, the tag at most 128 of `[A-Za-z0-9_.-]` (not starting with `.`
    or `-`), and no digest (a digest names content; a tag cannot make it so)."""
    from stepbuild.distribution.reference import parse_reference

    for name in tags:
        try:
            reference = parse_reference(name)
        except InvalidReference as exc:
            raise UsageError(f'invalid tag "{name}": {exc.problem}',
                             hint="-t [REGISTRY[:PORT]/]REPOSITORY[:TAG], the repository in"
                                  " lower case") from None
        if reference.digest is not None:
            raise UsageError(f'invalid tag "{name}": a tag cannot contain a digest',
                             hint="drop the @sha256:... part: a digest names content, it is"
                                  " not given by -t")
