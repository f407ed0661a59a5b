"""config.toml's `[defaults]` as the defaults of the command line: a flag given wins.

`install(parser)` reads the config files (stepbuild/config/settings.py) and makes their
values the argparse defaults of the options they stand for, before the command line is
parsed: `root` for `--root` (only when $STEPBUILD_ROOT is unset: the variable is more
specific than a file), `jobs` for build's `--jobs`, `network` and `isolation` for the
`--network` and `--isolation` of build and run; `gc-keep-storage` (no flag) for build's
automatic GC. A value outside an option's choices is a
`ConfigError` naming the file and key.

A broken config file does not stop `--help`: the error is kept, and every command raises it
when it runs (so it is printed once, by cli/main.py, as any other error).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from stepbuild.errors import ConfigError, StepbuildError

__all__ = ["install"]

# config.toml's [defaults] key → the option's dest, in the subcommands that have it.
_OPTIONS = {"jobs": "jobs", "network": "network", "isolation": "isolation"}


def install(parser: argparse.ArgumentParser) -> None:
    """Make config.toml's defaults those of `parser` and its subcommands (see above)."""
    from stepbuild.config.quantities import parse_size
    from stepbuild.config.settings import load_settings

    subcommands = _subcommands(parser)
    try:
        settings = load_settings()
        for key, value in settings.defaults.items():
            source = settings.default_sources[key]
            if key == "root":
                if not os.environ.get("STEPBUILD_ROOT"):
                    parser.set_defaults(root=value)
                continue
            if key == "gc-keep-storage":  # no flag: build's automatic GC (store_flags.py)
                parser.set_defaults(gc_keep_storage=parse_size(value))
                continue
            for sub in subcommands:
                _set_default(sub, _OPTIONS[key], value, source, key)
    except StepbuildError as exc:
        for sub in subcommands:
            sub.set_defaults(run=_Raise(exc))


def _set_default(sub: argparse.ArgumentParser, dest: str, value: Any, source: str,
                 key: str) -> None:
    action = next((a for a in sub._actions if a.dest == dest), None)
    if action is None:
        return  # this command has no such option
    if action.choices is not None and value not in action.choices:
        raise ConfigError(source, f"must be one of {', '.join(map(str, action.choices))},"
                          f" not {value!r}", key=f"defaults.{key}")
    sub.set_defaults(**{dest: value})


def _subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.extend(dict.fromkeys(action.choices.values()))  # aliases appear twice
    return found


class _Raise:
    """A command's `run` that raises the configuration's error instead of running."""

    def __init__(self, error: StepbuildError) -> None:
        self.error = error

    def __call__(self, options: argparse.Namespace) -> int:
        raise self.error
