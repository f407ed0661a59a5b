"""No-op rebuilds: a whole-build fingerprint, checked before anything heavy is imported.

A rebuild with nothing changed would parse (from the parse cache), plan, compute every step's
key, find every step cached and write the same image again — most of its ~100 ms is importing
the builder. Like make, we can tell sooner that nothing changed: a successful build records a
fingerprint of its inputs, and a later build with the same fingerprint replays the recorded
progress (every step CACHED, as the full path would print) and prints the same digest.

The fingerprint covers, conservatively (a change anywhere is a miss, never a wrong image):

- the command: the build options (not -q/-v/--jobs/--debug, which change no result), the
  working directory, and the environment (build args and secrets can come from it);
- stepbuild's own code (the stat of its modules and grammar): another version may build the
  same inputs differently;
- the stat (inode, mode, size, mtime, ctime) of every entry of the context — but what a
  literal line of the ignore file (`node_modules`, `.git`) excludes, so that a big ignored tree
  costs nothing — of the Stepfile and of every ignore file and --build-arg-file it could use.
  Taken *before* the build reads anything, so a file changed during the build makes the next
  one a miss. If any entry changed less than RACY_WINDOW_NS before the walk, no record is
  written: a second write within one timestamp tick would not change its stat (git's "racily
  clean" files).

A record also holds the store's tags after the build, the result's blobs and a hash of each
step cache record the build used: any tag that changed since (a rebuilt base, an `rmi`), a
blob gone (`prune`) or a step record replaced or removed (a full build would then run that
step, or take another layer) is a miss. The replay never prints a digest a full build would
not give now. It is written
only if, during the build, no tag changed except the result's own, no tag the build read
(FROM app -t app) was moved by it, and no step read anything from outside (an ADD of a URL or
git repository, FROM an archive: the build result's `outside`). Some builds are never
replayed: --no-cache, --pull=always, --push, --output, --cache-to, --reproducible, a Stepfile
on stdin.

Records: `<store>/fingerprints/<identity>.json` (`StoreLayout.fingerprints`), one per
(command, directory, context), so they do not pile up.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from stepbuild.frontend.source import STEPFILE_NAMES
from stepbuild.store.layout import StoreLayout  # names only: store.py would cost what we save

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable, Sequence

    from stepbuild.progress.events import EventCallback

__all__ = ["Witness", "record", "replay", "take"]

FORMAT = "stepbuild-build-fingerprint/2"  # 2: the step records it used
RACY_WINDOW_NS = 2_000_000_000  # as sources/context.py's stat cache
MAX_ENTRIES = 50_000  # a bigger context is left to the build's own walk (~5 µs each)
CACHED_LINE = "     CACHED"  # progress.py's line for a cached step
ISOLATION_LINE = "isolation: "  # the build's first line (sandbox/isolation.py)
# Options that change what is printed, not what is built.
_PRESENTATION = frozenset({"quiet", "verbose", "jobs", "debug", "run", "progress",
                           "progress_session"})  # cli/progress_flags.py
# Environment entries that differ between shells without meaning anything to a build.
_VOLATILE_ENV = frozenset({"_", "OLDPWD", "PWD", "SHLVL"})

@dataclass
class Witness:
    """What a build was started with: its fingerprint, where its record lives, and the store's
    tags before it ran."""

    store_root: Path
    identity: str
    value: str
    racy: bool
    tags_before: dict[str, str] = field(default_factory=dict)

    @property
    def layout(self) -> StoreLayout:
        return StoreLayout(self.store_root)


# --- before the build ---------------------------------------------------------------------


def take(options: argparse.Namespace, pull_policy: str, store_root: Path) -> Witness | None:
    """The fingerprint of this build, or None if it is never replayed."""
    if not _eligible(options, pull_policy):
        return None
    context = Path(options.context).absolute()
    command = {k: v for k, v in sorted(vars(options).items()) if k not in _PRESENTATION}
    identity = _hash([FORMAT, str(store_root.absolute()), os.getcwd(), str(context),
                      json.dumps(command, sort_keys=True, default=str)])
    digest = xxhash.xxh3_128(identity.encode())
    env = sorted((k, v) for k, v in os.environ.items() if k not in _VOLATILE_ENV)
    digest.update(json.dumps(env).encode())
    _feed_code(digest)
    started = time.time_ns()
    newest = 0
    for path in _input_files(options, context):
        newest = max(newest, _feed_stat(digest, str(path), path))
    walked = _feed_tree(digest, context, _ignored(options, context))
    if walked is None:
        return None
    newest = max(newest, walked)
    tags = _tags(StoreLayout(store_root))
    return Witness(store_root, identity, digest.hexdigest(),
                   racy=newest > started - RACY_WINDOW_NS, tags_before=tags or {})


def _eligible(options: argparse.Namespace, pull_policy: str) -> bool:
    return not (options.no_cache or getattr(options, "no_cache_filter", None)
                or options.reproducible or options.push or options.output
                or options.cache_to or options.file == "-"
                or getattr(options, "fetched_context", None)  # cli/context_flags.py
                or getattr(options, "iidfile", None) or getattr(options, "metadata_file", None)
                or pull_policy not in ("missing", "never"))


def _input_files(options: argparse.Namespace, context: Path) -> list[Path]:
    """The Stepfile (every candidate, when not named) and every ignore file and build-arg file
    the build could read."""
    from stepbuild.sources.ignore import candidates

    stepfiles = _stepfiles(options, context)
    ignores = {path: None for s in stepfiles for path in candidates(context, s)}
    return [*stepfiles, *ignores, *(Path(f).absolute() for f in options.build_arg_file)]


def _stepfiles(options: argparse.Namespace, context: Path) -> list[Path]:
    if options.file:
        return [Path(options.file).absolute()]
    return [context / name for name in STEPFILE_NAMES]


def _ignored(options: argparse.Namespace, context: Path) -> set[str]:
    """Context paths the applicable ignore file excludes by a literal pattern (`node_modules`,
    `.git`): the walk skips them, since the build never reads what is below them. Nothing is
    skipped if any pattern re-includes (`!`)."""
    from stepbuild.sources.ignore import ignore_patterns

    stepfile = next((s for s in _stepfiles(options, context) if s.is_file()), None)
    try:
        patterns = ignore_patterns(context, stepfile)
    except OSError:
        return set()
    if any(p.startswith("!") for p in patterns):
        return set()
    literal = {p for p in patterns if not any(c in p for c in "*?[\\")}
    return {p for p in literal if p not in ("", ".", "..") and not p.startswith("../")}


def _feed_stat(digest: xxhash.xxh3_128, name: str, path: Path | None,
               info: os.stat_result | None = None) -> int:
    """Add one entry's stat (or its absence); return its newest time (0 if absent)."""
    if info is None:
        try:
            info = os.lstat(path) if path is not None else None
        except OSError:
            info = None
    if info is None:
        digest.update(f"{name}\0-\n".encode(errors="surrogateescape"))
        return 0
    digest.update(f"{name}\0{info.st_ino}\0{info.st_mode}\0{info.st_size}\0"
                  f"{info.st_mtime_ns}\0{info.st_ctime_ns}\n".encode(errors="surrogateescape"))
    return max(info.st_mtime_ns, info.st_ctime_ns)


def _feed_code(digest: xxhash.xxh3_128) -> None:
    """Add the stat of stepbuild's own code (package and grammar): another version may build
    the same inputs differently (a new key schema, a fixed bug), so it must not replay."""
    package = Path(__file__).resolve().parents[1]
    pending = [str(package / "grammar"), str(package.parent / "grammar"), str(package)]
    while pending:
        directory = pending.pop()
        with suppress(OSError), os.scandir(directory) as it:
            for entry in sorted(it, key=lambda e: e.name):
                if entry.name.endswith((".py", ".lark")):
                    _feed_stat(digest, entry.path, None, entry.stat())
                elif entry.is_dir(follow_symlinks=False) and entry.name != "__pycache__":
                    pending.append(entry.path)  # a subpackage


def _feed_tree(digest: xxhash.xxh3_128, root: Path, skipped: set[str]) -> int | None:
    """Add every entry below `root` (sorted, not following symlinks) but the `skipped` paths
    and what is below them; return the newest time, or None past MAX_ENTRIES entries."""
    newest = _feed_stat(digest, ".", root)
    count = 0
    pending = [""]
    while pending:
        rel = pending.pop()
        try:
            with os.scandir(root / rel if rel else root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            digest.update(f"{rel}\0unreadable\n".encode(errors="surrogateescape"))
            continue
        for entry in entries:
            count += 1
            if count > MAX_ENTRIES:
                return None
            name = f"{rel}/{entry.name}" if rel else entry.name
            if name in skipped:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                info = None
            newest = max(newest, _feed_stat(digest, name, None, info))
            if info is not None and entry.is_dir(follow_symlinks=False):
                pending.append(name)
    return newest


# --- a rebuild with nothing changed ---------------------------------------------------------


def replay(witness: Witness, *, quiet: bool, verbose: bool,
           emit: EventCallback | None = None) -> bool:
    """If the last build with this identity had this fingerprint and its result is intact,
    print what a full no-op rebuild would print and return True. `emit`: the progress as
    events instead (--progress=rawjson)."""
    saved = _load(witness)
    if saved is None:
        return False
    from stepbuild.fs.locks import flocked  # not at the top: most builds have no record

    layout = witness.layout
    # store/store.py's store lock, shared: no prune while we check and print.
    with flocked(layout.lock, exclusive=False, mode=0o644):
        if _tags(layout) != saved["tags"]:
            return False
        if not (_store_is_own(layout)
                and all((layout.blobs / d[7:]).is_file() for d in saved["blobs"])
                and all((layout.layers / d[7:] / "diff").is_dir() for d in saved["layers"])):
            return False
        if _step_records(layout, saved["records"]) != saved["records"]:
            return False  # a full build would read other step records
        for key in saved["records"]:  # as a cache hit does (records.touch): prune is LRU
            with suppress(OSError):
                os.utime(layout.cache / f"{key}.json")
        if emit is not None:
            _emit(saved, emit)
        else:
            _print(saved, quiet=quiet, verbose=verbose)
    return True


def _store_is_own(layout: StoreLayout) -> bool:
    """The store root is this user's and nobody else may write to it; otherwise the full
    build runs, and opening the store refuses it with the fix (store.check_owned)."""
    try:
        info = layout.root.stat()
    except OSError:
        return False
    return info.st_uid == os.geteuid() and not info.st_mode & 0o022


def _load(witness: Witness) -> dict[str, Any] | None:
    try:
        saved = json.loads(_record_path(witness).read_bytes())
    except (OSError, ValueError):
        return None
    if (not isinstance(saved, dict) or saved.get("format") != FORMAT
            or saved.get("fingerprint") != witness.value):
        return None
    ok = (isinstance(saved.get("tags"), dict) and isinstance(saved.get("blobs"), list)
          and isinstance(saved.get("layers"), list) and isinstance(saved.get("records"), dict)
          and isinstance(saved.get("transcript"), list) and isinstance(saved.get("digest"), str)
          and isinstance(saved.get("warnings"), list) and isinstance(saved.get("names"), list))
    return saved if ok else None


def _emit(saved: dict[str, Any], emit: EventCallback) -> None:
    from stepbuild.progress.replay import replayed_events

    for event in replayed_events(saved["transcript"], saved["warnings"], saved["digest"],
                                 saved["names"]):
        emit(event)
    print(saved["digest"])


def _print(saved: dict[str, Any], *, quiet: bool, verbose: bool) -> None:
    err = sys.stderr
    transcript = saved["transcript"]
    # The isolation line comes first, before the Stepfile's warnings, as in a full build.
    head = 1 if transcript and transcript[0][1].startswith(ISOLATION_LINE) else 0
    if not quiet:
        for _label, line in transcript[:head]:
            err.write(line + "\n")
    for warning in saved["warnings"]:
        err.write(f"warning: {warning}\n")
    if not quiet:
        for label, line in transcript[head:]:
            err.write((f"[{label}] " if label else "") + line + "\n")
        if verbose:
            err.write("nothing changed since the last build (whole-build fingerprint)\n")
        names = saved["names"]
        named = f", tagged {', '.join(names)}" if names else ""
        lines = [line for _label, line in saved["transcript"]]
        steps, cached = sum(1 for x in lines if x.startswith("#")), lines.count(CACHED_LINE)
        err.write(f"built {saved['digest']} ({steps} steps, {cached} cached){named}\n")
    err.flush()
    print(saved["digest"])


# --- after a successful build ---------------------------------------------------------------


def record(witness: Witness, *, digest: str, names: list[str], resolved: set[str],
           transcript: list[tuple[str, str]], warnings: list[str],
           outside: Sequence[str] = (), keys: Sequence[str] = ()) -> bool:
    """Remember this build for `replay`, unless it cannot be trusted (see the module
    docstring); True if recorded. `outside`: what the build read from outside its context
    (a URL, a git repository, an archive): its result may differ next time although no local
    input changed, so it is not recorded. A failure to write is not an error: only speed is
    lost. `keys`: of the build's steps, whose cache records a replay checks are unchanged."""
    from stepbuild.fs.durable import write_file  # not at the top: replay never writes

    if witness.racy or outside:
        return False
    after = _tags(witness.layout)
    if after is None:
        return False
    ours = {name for name, value in after.items() if value == digest}
    others_before = {k: v for k, v in witness.tags_before.items() if k not in ours}
    others_after = {k: v for k, v in after.items() if k not in ours}
    moved = {n for n in ours if witness.tags_before.get(n) not in (None, digest)}
    if others_before != others_after or moved & resolved:
        return False
    contents = _contents_of(witness.layout, digest)
    records = _step_records(witness.layout, keys)
    if contents is None or None in records.values():
        return False  # a record missing (a team cache hit left for later): not replayable
    saved = {"format": FORMAT, "fingerprint": witness.value, "digest": digest, "names": names,
             "tags": after, "blobs": contents[0], "layers": contents[1], "records": records,
             "warnings": warnings,
             "transcript": [[label, CACHED_LINE if line.startswith("     DONE") else line]
                            for label, line in transcript]}
    with suppress(OSError):
        path = _record_path(witness)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        write_file(path, json.dumps(saved).encode(), 0o600, durable=False)  # a cache: no fsync
        return True
    return False


def _contents_of(layout: StoreLayout, digest: str) -> tuple[list[str], list[str]] | None:
    """The result's blobs (manifest, config, layers) and layer dirs (its diff_ids), which a
    replay checks are still there (`stepbuild run` needs the dirs); None if unreadable."""
    blobs = layout.blobs
    try:
        manifest = json.loads((blobs / digest.split(":", 1)[1]).read_bytes())
        config = manifest["config"]["digest"]
        diff_ids = json.loads((blobs / config.split(":", 1)[1]).read_bytes())["rootfs"]["diff_ids"]
        found = [digest, config, *(layer["digest"] for layer in manifest.get("layers", []))]
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None
    if not all(isinstance(d, str) and d.startswith("sha256:") for d in [*found, *diff_ids]):
        return None
    return found, diff_ids


# --- the store, read directly (importing store/store.py would cost what we save) ------------------


def _tags(layout: StoreLayout) -> dict[str, str] | None:
    """ref name → manifest digest of index.json (None if unreadable)."""
    try:
        index = json.loads(layout.index.read_bytes())
        return {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
                for m in index.get("manifests", [])
                if "org.opencontainers.image.ref.name" in (m.get("annotations") or {})}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _step_records(layout: StoreLayout, keys: Iterable[str]) -> dict[str, str | None]:
    """key → xxh3 of its step cache record's bytes (None if it cannot be read). Records are
    replaced by rename, never rewritten in place, so equal bytes are the same record."""
    found: dict[str, str | None] = {}
    for key in keys:
        if not isinstance(key, str) or not key.isalnum():
            found[key] = None  # not a key: never a path
            continue
        try:
            found[key] = xxhash.xxh3_128_hexdigest((layout.cache / f"{key}.json").read_bytes())
        except OSError:
            found[key] = None
    return found


def _record_path(witness: Witness) -> Path:
    return witness.layout.fingerprints / f"{witness.identity}.json"


def _hash(parts: list[str]) -> str:
    return xxhash.xxh3_128_hexdigest("\0".join(parts).encode(errors="surrogateescape"))
