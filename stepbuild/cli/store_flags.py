"""Housekeeping on the command line: `du`, the flags of `prune`, and the automatic GC.

`prune` keeps cache records by last use (store/policy.py says what "in use" is):
`--keep-storage SIZE`, `--filter until=DURATION`, `--all`, `--dry-run`, and a confirmation
unless `-f`. As `buildx prune` it asks on the terminal; unlike buildx, whose prompt reads a
"no" from an empty stdin and exits 0 having done nothing, a prune without a terminal to ask
and without `-f` is a usage error (exit 2): a script learns at once that it needs `-f`.
`--dry-run` never asks and changes nothing.

The automatic GC: `[defaults] gc-keep-storage = "10GB"` in config.toml; after a build, a
store over that size is pruned with `--keep-storage` of it, and one line on stderr says so.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING

from stepbuild.config.quantities import parse_duration, parse_size
from stepbuild.errors import UsageError
from stepbuild.progress import human_size

if TYPE_CHECKING:
    from stepbuild.store.gc import PrunePlan, PruneStats
    from stepbuild.store.policy import Policy
    from stepbuild.store.store import Store


def _argument(parse: Callable[[str], object], name: str) -> Callable[[str], object]:
    """An argparse `type` whose ValueError becomes argparse's usage error."""
    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = name
    return convert


def _until(text: str) -> float:
    key, _, value = text.partition("=")
    if key != "until" or not value:
        raise ValueError(f"{text!r}: the only filter is until=DURATION (e.g. until=24h)")
    return parse_duration(value)


def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-storage", type=_argument(parse_size, "size"), metavar="SIZE",
                        help="remove the least recently used cache records, and what only"
                             " they keep, until the store is under SIZE (e.g. 5GB)")
    parser.add_argument("--filter", type=_argument(_until, "filter"), dest="until",
                        metavar="until=DURATION",
                        help="remove cache records not used within DURATION (e.g. 24h, 7d;"
                             " default 48h unless --keep-storage or --all)")
    parser.add_argument("-a", "--all", action="store_true", dest="everything",
                        help="remove every cache record and all untagged image data (tags"
                             " stay)")
    parser.add_argument("--dry-run", action="store_true",
                        help="say what would be removed and freed; remove nothing")
    parser.add_argument("-f", "--force", action="store_true",
                        help="do not ask for confirmation (needed without a terminal)")


def add_du_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also the apparent sizes, and each image's exclusive and shared"
                             " bytes")


def policy(options: argparse.Namespace) -> Policy:
    from stepbuild.store.policy import Policy

    return Policy(keep_storage=options.keep_storage, unused_for=options.until,
                  everything=options.everything)


def _what(chosen: Policy) -> str:
    """The policy in words, for the prompt and the dry run."""
    parts = []
    window = chosen.window()
    if chosen.everything:
        parts.append("every cache record")
    if window is not None:
        parts.append(f"cache records unused for {_duration(window)}")
    if chosen.keep_storage is not None:
        parts.append(f"least recently used cache records until the store is under"
                     f" {human_size(chosen.keep_storage)}")
    return ", ".join(parts) + ", and what nothing else keeps (tags stay)"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def confirm(options: argparse.Namespace, chosen: Policy) -> bool:
    """True to go on: -f, or a "y" typed at the terminal. No terminal: UsageError."""
    if options.force or options.dry_run:
        return True
    if not sys.stdin.isatty():
        raise UsageError("prune asks before removing anything, and stdin is not a terminal",
                         hint="pass -f (--force) to prune without asking, or --dry-run")
    print(f"WARNING! This will remove {_what(chosen)}.", file=sys.stderr)
    answer = input("Are you sure you want to continue? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def print_plan(store: Store, planned: PrunePlan, chosen: Policy) -> None:
    """`prune --dry-run`: the records that would go, oldest use first, and the bytes."""
    import time

    print(f"would remove {_what(chosen)}:")
    now = time.time()
    records = {path.stem: (path, record) for path, record in store.cache_records.scan()}
    for key in planned.evicted:
        path, record = records[key]
        with suppress(FileNotFoundError):
            minutes = round((now - path.lstat().st_mtime) / 60)
            age = f"{_duration(minutes * 60)} ago" if minutes > 0 else "now"
            print(f"  {key}  last used {age}  {record.created_by if record else '?'}")
    print(f"would remove {len(planned.evicted)} cache records and free"
          f" {human_size(planned.freed)} (the store: {human_size(planned.before)} →"
          f" {human_size(planned.after)})")


def print_stats(stats: PruneStats) -> None:
    print(f"removed {stats.layers} layers, {stats.blobs} blobs ({human_size(stats.bytes_freed)}),"
          f" {stats.cache_records} cache records, {stats.remote_records} remote-blob records,"
          f" {stats.tmp_entries} temporary entries; freed {human_size(stats.disk_freed)} on"
          " disk")


def print_du(store: Store, *, verbose: bool) -> None:
    """`stepbuild du`: by kind, per image, and what prune would free."""
    from stepbuild.store import gc, usage
    from stepbuild.store.policy import Policy

    with store.lock(exclusive=False):
        counted = usage.census(store.layout)
        reached = gc.reached_by_tag(store)
        default = gc.plan(store, Policy(), counted=counted)
        everything = gc.plan(store, Policy(everything=True), counted=counted)
    width = max(map(len, counted.kinds))
    header = f"{'KIND':<{width}}  {'SIZE':>9}" + (f"  {'APPARENT':>9}" if verbose else "")
    print(header)
    for kind, size in [*counted.kinds.items(), ("total", counted.total)]:
        line = f"{kind:<{width}}  {human_size(size.disk):>9}"
        print(line + (f"  {human_size(size.apparent):>9}" if verbose else ""))
    images = usage.image_usage(reached, counted)
    if images:
        print(f"\n{'IMAGE':<{width}}  {'EXCLUSIVE':>9}  {'SHARED':>9}")
        for image in images:
            print(f"{image.name:<{width}}  {human_size(image.exclusive.disk):>9}"
                  f"  {human_size(image.shared.disk):>9}")
    print(f"\nprune would free {human_size(default.freed)} ({len(default.evicted)} cache"
          f" records unused for 48h); prune --all {human_size(everything.freed)}")


def auto_gc(store: Store, limit: int, *, say: bool = True) -> None:
    """After a build: prune `store` to `limit` (gc-keep-storage) if it is over it (module
    docstring); `say`: print the notice (not into a rawjson stream). Skipped while another
    command holds the store (it would wait for that build; the GC after that build does it)."""
    from stepbuild.fs.locks import flocked
    from stepbuild.store import gc
    from stepbuild.store.policy import Policy
    from stepbuild.store.usage import census

    with flocked(store.layout.lock, exclusive=True, wait=False) as free:
        if not free:
            return  # another build runs: the GC after it will do
    size = census(store.layout).total.disk
    if size <= limit:
        return
    store.grace_period = 0  # as `stepbuild prune`: it holds the store exclusively
    stats = gc.prune(store, policy=Policy(keep_storage=limit))
    if say:
        print(f"stepbuild: the store was {human_size(size)}, over gc-keep-storage"
              f" {human_size(limit)}: removed {stats.cache_records} cache records, freed"
              f" {human_size(stats.disk_freed)}", file=sys.stderr)
