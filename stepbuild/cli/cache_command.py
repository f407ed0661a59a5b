"""`stepbuild cache ls|du|prune --cache SPEC`: look after a team cache (issue 16).

SPEC is a --cache-from/--cache-to value naming the cache: `type=registry,ref=HOST/REPO:TAG`
or `type=local,src=DIR` (`dest=DIR` too). `teamcache/prune.py` decides what goes;
`teamcache/local.py` and `teamcache/registry_prune.py` read and change the cache.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from stepbuild.errors import UsageError

if TYPE_CHECKING:
    from stepbuild.teamcache.prune import Entry, Plan, Policy

    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["add_parser", "parse_policy", "parse_spec", "parse_until"]

_EXAMPLES = """\
examples:
  stepbuild cache ls --cache type=registry,ref=registry.example/app:cache
  stepbuild cache du --cache type=local,src=/shared/cache --filter until=168h
  stepbuild cache prune --cache type=registry,ref=registry.example/app:cache \\
      --filter until=720h --keep-storage 20g -f

A registry cache's blobs are freed by the registry's own garbage collection (for
Distribution: `registry garbage-collect CONFIG`, run read-only or stopped)."""
_SPEC_HINT = "--cache type=registry,ref=HOST/REPO:TAG or --cache type=local,src=DIR"


def add_parser(commands: Subcommands,
               add_registry_arguments: Callable[[argparse.ArgumentParser], None]) -> None:
    """`cache` and its three subcommands; `add_registry_arguments` gives each the registry
    flags every registry command has (cli/main.py's, passed in: main imports this module)."""
    cache = commands.add_parser("cache", help="list, measure and prune a team cache"
                                " (--cache-to/--cache-from)", epilog=_EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = cache.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
    cache.set_defaults(run=lambda _options: _usage(cache))
    for name, helptext, func in (
            ("ls", "list the cache's keys: size, last use, step", ls),
            ("du", "the cache's size, per writer, and what prune would free", du),
            ("prune", "drop keys by age and size and fold the writer tags", prune)):
        sub = subs.add_parser(name, help=helptext)
        sub.add_argument("--cache", required=True, metavar="SPEC",
                         help="type=registry,ref=HOST/REPO:TAG or type=local,src=DIR")
        add_registry_arguments(sub)
        if name == "ls":
            sub.add_argument("--json", action="store_true", help="one JSON object per key")
        else:
            _add_policy_arguments(sub)
        if name == "prune":
            sub.add_argument("--dry-run", action="store_true",
                             help="say what would go; change nothing")
            sub.add_argument("-f", "--force", action="store_true",
                             help="do not ask for confirmation")
        sub.set_defaults(run=func)


def _add_policy_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--keep-storage", metavar="SIZE",
                     help="drop the least recently used keys until the blobs take at most"
                          " SIZE (10g, 500m); a writer's newest export is always kept")
    sub.add_argument("--filter", action="append", default=[], metavar="until=DURATION",
                     help="drop keys last used before DURATION ago (24h, 90m) or before a"
                          " time (RFC 3339, or seconds since the epoch)")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# --- parsing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spec:
    type: str  # "local" | "registry"
    location: str  # DIR | REF


def parse_spec(text: str) -> Spec:
    """--cache's value: `type=registry,ref=REF` or `type=local,src=DIR` (or `dest=DIR`)."""
    fields: dict[str, str] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep:
            raise UsageError(f"invalid --cache {text!r}: {part!r} is not KEY=VALUE",
                             hint=_SPEC_HINT)
        fields[name.strip()] = value.strip()
    kind = fields.pop("type", "registry" if "ref" in fields else "local")
    where = {"registry": ("ref",), "local": ("src", "dest")}.get(kind)
    if where is None:
        raise UsageError(f"unknown --cache type {kind!r}", hint=_SPEC_HINT)
    found = [fields.pop(name) for name in where if name in fields]
    fields.pop("mode", None)  # a --cache-to value may be pasted as it is
    if len(found) != 1 or not found[0] or fields:
        raise UsageError(f"invalid --cache {text!r}", hint=_SPEC_HINT)
    if kind == "registry":
        from stepbuild.teamcache.cache import _registry_ref

        _registry_ref(found[0], "--cache", bare=False)
    return Spec(kind, found[0])


def parse_until(text: str, now: float) -> float:
    """`until=`'s value as a time (epoch seconds): a Go duration before `now`, an RFC 3339
    time, or seconds since the epoch."""
    from stepbuild.frontend.flags import FlagError, parse_duration

    try:
        return now - parse_duration(text, "--filter") / 1e9
    except FlagError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"invalid --filter until={text!r}",
                         hint="a duration (24h, 90m) or a time (2026-01-31T12:00:00Z)") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def parse_policy(options: argparse.Namespace, now: float) -> Policy:
    from stepbuild.sandbox.limits import parse_size
    from stepbuild.teamcache.prune import Policy

    until = None
    for text in options.filter:
        name, sep, value = text.partition("=")
        if name != "until" or not sep or not value:
            raise UsageError(f"unknown --filter {text!r}", hint="--filter until=DURATION")
        until = parse_until(value, now)
    keep = None
    if options.keep_storage is not None:
        try:
            keep = parse_size(options.keep_storage)
        except ValueError as exc:
            raise UsageError(f"invalid --keep-storage: {exc}") from None
    return Policy(until, keep)


# --- the caches ---------------------------------------------------------------------------------


@dataclass
class _Opened:
    """A cache read for tidying: its entries, and how to apply a plan (bytes freed, manifests
    deleted)."""

    entries: list[Entry]
    apply: Callable[[Plan], tuple[int, int]]
    extra: int = 0  # bytes freed beside the plan (orphan blobs of a local dir)
    registry: bool = False


@contextmanager
def _opened(options: argparse.Namespace, *, change: bool, now: float) -> Iterator[_Opened]:
    spec = parse_spec(options.cache)
    if spec.type == "local":
        from stepbuild.teamcache.local import LocalDir

        local = LocalDir(Path(spec.location))
        with local.locked(exclusive=change):
            entries = local.inventory()
            orphans = sum(local.orphans(entries, now).values())
            yield _Opened(entries, lambda plan: (local.delete(plan, now), 0), orphans)
        return
    from stepbuild.cli.commands import _connection
    from stepbuild.teamcache.records import CacheError
    from stepbuild.teamcache.registry import RegistryCache
    from stepbuild.teamcache.registry_prune import RegistryInventory

    warnings: list[str] = []
    # No store: the store root only names the writer of an export, and a prune exports none.
    cache = RegistryCache(spec.location, _connection(options), Path("/nonexistent"),
                          warnings.append)
    try:
        inventory = RegistryInventory(cache)
        inventory.read()
        if not inventory.maps:
            raise CacheError(f"no team cache at {spec.location}")
        yield _Opened(inventory.entries(), lambda plan: (plan.freed, inventory.fold(plan)),
                      registry=True)
    finally:
        cache.close()
        for warning in warnings:
            print(f"stepbuild: warning: cache {spec.location}: {warning}", file=sys.stderr)


# --- the commands -------------------------------------------------------------------------------


def ls(options: argparse.Namespace) -> int:
    from stepbuild.progress.units import human_size
    from stepbuild.teamcache.records import stamp

    with _opened(options, change=False, now=time.time()) as cache:
        entries = sorted(cache.entries, key=lambda e: (-e.used, e.name))
    if options.json:
        for e in entries:
            print(json.dumps({"key": e.name, "size": e.size, "last_used": stamp(e.used),
                              "newest": e.newest, "blobs": [d for d, _ in e.blobs],
                              "writers": list(e.writers), "created_by": e.created_by},
                             sort_keys=True))
        return 0
    print(f"{'KEY':<14}{'SIZE':>9}  {'LAST USED':<21}STEP")
    for e in entries:
        mark = "*" if e.newest else " "
        print(f"{_short(e.name):<13}{mark}{human_size(e.size):>9}  {_when(e.used):<21}"
              f"{e.created_by[:60]}")
    print("(* part of a writer's newest export: kept by --keep-storage)")
    return 0


def du(options: argparse.Namespace) -> int:
    from stepbuild.progress.units import human_size
    from stepbuild.teamcache.prune import plan, unique_bytes

    now = time.time()
    policy = parse_policy(options, now)
    with _opened(options, change=False, now=now) as cache:
        outcome = plan(cache.entries, policy)
        extra = cache.extra
    print(f"total: {human_size(outcome.total)} in {len(cache.entries)} keys")
    for writer, entries in _by_writer(cache.entries):
        print(f"  {writer}: {len(entries)} keys, {human_size(unique_bytes(entries))}")
    print(f"prune would free: {human_size(outcome.freed + extra)} ({len(outcome.drop)} keys"
          f"{', after the registry garbage-collects' if cache.registry else ''})")
    return 0


def prune(options: argparse.Namespace) -> int:
    from stepbuild.progress.units import human_size
    from stepbuild.teamcache.prune import plan

    now = time.time()
    policy = parse_policy(options, now)
    change = not options.dry_run
    with _opened(options, change=change, now=now) as cache:
        outcome = plan(cache.entries, policy)
        for entry in outcome.drop:
            print(f"{'would remove' if options.dry_run else 'removing'} {_short(entry.name)}"
                  f"  {_when(entry.used)}  {entry.created_by[:60]}")
        if options.dry_run:
            print(f"would remove {len(outcome.drop)} keys and free"
                  f" {human_size(outcome.freed + cache.extra)}")
            return 0
        if not options.force and not _confirm(len(outcome.drop), options.cache):
            print("nothing removed")
            return 0
        freed, deleted = cache.apply(outcome)
    if cache.registry:
        print(f"removed {len(outcome.drop)} keys; deleted {deleted} manifests; the registry's"
              f" garbage collection frees up to {human_size(freed)}")
    else:
        print(f"removed {len(outcome.drop)} keys and freed {human_size(freed)}")
    return 0


def _confirm(count: int, where: str) -> bool:
    print(f"WARNING! This removes {count} keys from {where} (and folds a registry cache's"
          " writer tags into its tag).\n"
          "Are you sure you want to continue? [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        answer = input()
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _by_writer(entries: Sequence[Entry]) -> list[tuple[str, list[Entry]]]:
    groups: dict[str, list[Entry]] = {}
    for entry in entries:
        for writer in entry.writers or ("(no writer recorded)",):
            groups.setdefault(writer, []).append(entry)
    return sorted(groups.items())


def _short(name: str) -> str:
    prefix, _, rest = name.rpartition("/")
    return (prefix + "/" if prefix else "") + rest.removeprefix("sha256:")[:12]


def _when(used: float) -> str:
    """For people: to the second. (`--json` gives the record's stamp, to the microsecond:
    two exports in one second still sort apart.)"""
    return datetime.fromtimestamp(used, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
