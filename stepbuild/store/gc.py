"""Garbage collection and the consistency check of a store.

`prune(store)`: mark what the tags (and the cache records) reach, then sweep what nothing
references and is older than the grace period (containerd's tricolor mark, umoci's
casext/gc.go). With a `Policy` (policy.py), the least recently used cache records go
first, and with them what only they kept; `plan` says what such a prune would remove and free,
removing nothing (`prune --dry-run`, `du`). `check(store)`: every inconsistency of the store,
as a list of one-line problems. Both read the store through its public methods and records
(store.py, records.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from stepbuild.errors import DigestMismatch, InvalidDocument, LayerError, StoreError
from stepbuild.fs.trees import remove_tree
from stepbuild.layers.verify import verify_layer_dir
from stepbuild.oci.digest import PREFIX, digest_hex, is_digest_hex, sha256_file
from stepbuild.oci.documents import INDEX_TYPES, MANIFEST_TYPES, Descriptor, validate_layout
from stepbuild.store.explain import ExplainRecords
from stepbuild.store.policy import Policy, RecordUse, choose
from stepbuild.store.records import CACHE_KEY, CacheRecord
from stepbuild.store.store import STAGING_NAME
from stepbuild.store.usage import Census, census

if TYPE_CHECKING:
    from stepbuild.store.store import Store

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class PruneStats:
    """What one `prune()` removed. `bytes_freed` counts blob bytes only."""

    blobs: int = 0
    layers: int = 0
    cache_records: int = 0
    tmp_entries: int = 0
    compressed_records: int = 0
    remote_records: int = 0
    bytes_freed: int = 0
    disk_freed: int = 0  # with a policy: bytes on disk, as `du` counts them (plan.freed)


@dataclass(frozen=True, slots=True)
class PrunePlan:
    """What a prune under a policy removes: the cache records (keys, least recently used
    first), and the store's size before and after (bytes on disk, as `du` counts them)."""

    evicted: tuple[str, ...]
    before: int
    after: int

    @property
    def freed(self) -> int:
        return self.before - self.after


# --- prune --------------------------------------------------------------------------------


def prune(store: Store, *, keep_cache: bool = True, policy: Policy | None = None,
          now: float | None = None) -> PruneStats:
    """Delete what nothing references and is older than `store.grace_period`.

    Roots: every manifest in index.json (→ its config, layer blobs, and the layer dirs and
    blobs of its diff_ids; nested indexes followed) and, with `keep_cache`, every cache record
    (→ its diff_ids' dirs and blobs, its blobs). Without `keep_cache` the tags are the only
    roots and a cache record that names anything they do not reach is deleted too (`stepbuild
    prune`: "what no tag reaches"). A compressed-blob record stays while its layer's diff_id
    is reachable, and keeps its compressed blob. Swept when unreferenced *and* older than the
    grace period: blobs, layer dirs, staging dirs `layers/*.tmp-*`, tmp/ entries, corrupt or
    dangling cache records, old entries of cache/corrupt/, compressed-blob records of
    unreachable layers. Remote-blob records go, whatever their age, once the layer or config
    they describe is neither reachable nor in the store any more, and when corrupt.

    With `policy`, first the records `plan(store, policy, now)` picks are deleted, whatever
    their age (`now`: the time last uses are compared with; default the clock); the rest
    of the records are roots, as with `keep_cache`.

    Takes the store lock exclusively (waits for every shared holder) and the index lock.
    Raises `StoreError` without deleting anything if a tagged manifest or its config is
    present but unreadable (its children cannot be marked; run `check()`). A tag whose
    manifest is missing marks nothing.
    """
    with store.lock(exclusive=True), store.index_lock():
        cutoff = time.time() - store.grace_period
        evicted, disk_freed = 0, 0
        if policy is not None:
            planned = plan(store, policy, now=now)
            evicted, disk_freed = _evict(store, planned.evicted), planned.freed
        if keep_cache or policy is not None:
            cache_records = evicted + _sweep_cache(store, cutoff)
            blobs, layers = _mark(store)
        else:
            blobs, layers = _mark(store, include_cache=False)
            cache_records = _sweep_cache(store, cutoff, (blobs, layers))
        # Records before the blobs they name; kept records mark their blobs.
        compressed_records = _sweep_compressed(store, blobs, cutoff)
        # Dirs before blobs: a layer dir must never outlive its blob (crash safety).
        swept_layers = _sweep_layers(store, layers, cutoff)
        swept_blobs, bytes_freed = _sweep_blobs(store, blobs, cutoff)
        tmp_entries = _sweep_dir(store.layout.tmp, cutoff, lambda name: True)
        remote_records = _sweep_remote(store, blobs)  # after the blobs they name
        _sweep_pushed(store)  # hints of images gone: not counted
        ExplainRecords(store).prune_orphans()  # explanation material goes with its record
    return PruneStats(swept_blobs, swept_layers, cache_records, tmp_entries,
                      compressed_records, remote_records, bytes_freed, disk_freed)


def plan(store: Store, policy: Policy, *, now: float | None = None,
         counted: Census | None = None) -> PrunePlan:
    """What `prune(store, policy=policy)` would remove and free; removes nothing.

    `counted`: the store's census if the caller has one (`du`). The sizes assume a prune
    without grace period (as `stepbuild prune` runs): every temporary entry goes, and every
    blob and layer nothing keeps. Compressed blobs count with their layer (a compressed-blob
    record keeps one while its layer stays). Hold the store lock for an exact answer.
    """
    counted = census(store.layout) if counted is None else counted
    pinned = set().union(*reached_by_tag(store).values())
    compressed = _compressed_by_layer(store, pinned)
    folded = {c for blobs in compressed.values() for c in blobs}
    sizes = {hex_name: counted.content(hex_name).disk
             + sum(counted.blobs[c].disk for c in compressed.get(hex_name, ()) if c in
                   counted.blobs)
             for hex_name in {*counted.blobs, *counted.layers} - folded}
    uses = _record_uses(store)
    kept = set().union(*(use.content for use in uses), pinned)
    tmp = counted.kinds["tmp"].disk - store.layout.tmp.lstat().st_blocks * 512  # not tmp/
    garbage = tmp + sum(size for hex_name, size in sizes.items() if hex_name not in kept)
    total = counted.total.disk
    choice = choose(uses, pinned=pinned, sizes=sizes, garbage=garbage, total=total,
                    policy=policy, now=time.time() if now is None else now)
    return PrunePlan(choice.evicted, total, choice.projected)


def reached_by_tag(store: Store) -> dict[str, set[str]]:
    """Each ref name (an untagged index entry: its digest) → the hex names of the blobs and
    layer dirs it reaches."""
    reached: dict[str, set[str]] = {}
    for desc in store.read_index().manifests:
        blobs: set[str] = set()
        layers: set[str] = set()
        _mark_manifest(store, desc, blobs, layers)
        reached.setdefault(desc.ref_name or desc.digest, set()).update(blobs | layers)
    return reached


def _record_uses(store: Store) -> list[RecordUse]:
    """Every readable cache record with its last use (its file's mtime) and content."""
    uses = []
    for path, record in store.cache_records.scan():
        if record is None or not CACHE_KEY.fullmatch(path.stem):
            continue  # corrupt: `_sweep_cache` takes it
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        content = frozenset(map(digest_hex, [*record.diff_ids, *record.blobs]))
        uses.append(RecordUse(path.stem, info.st_mtime, content, info.st_blocks * 512))
    return uses


def _compressed_by_layer(store: Store, pinned: set[str]) -> dict[str, set[str]]:
    """Layer hex → the hex names of its compressed blobs that the tags do not keep."""
    found: dict[str, set[str]] = {}
    for _, desc, hex_name in store.compressed_records.scan():
        if desc is not None and digest_hex(desc.digest) not in pinned:
            found.setdefault(hex_name, set()).add(digest_hex(desc.digest))
    return found


def _evict(store: Store, keys: tuple[str, ...]) -> int:
    """Delete the records of `keys`; how many were there."""
    removed = 0
    for key in keys:
        with suppress(FileNotFoundError):
            store.cache_records.path(key).unlink()
            removed += 1
    return removed


def _sweep_pushed(store: Store) -> None:
    """Remove the push records (`images --digests`) of manifests no longer in the store."""
    for path, image in store.push_records.scan():
        if not store.has_blob(image):
            with suppress(FileNotFoundError):
                path.unlink()


def _mark(store: Store, include_cache: bool = True) -> tuple[set[str], set[str]]:
    """The hex names of reachable blobs and layer dirs."""
    blobs: set[str] = set()
    layers: set[str] = set()
    for desc in store.read_index().manifests:
        _mark_manifest(store, desc, blobs, layers)
    if not include_cache:
        return blobs, layers
    for _, record in store.cache_records.scan():
        if record is not None:
            layers.update(map(digest_hex, record.diff_ids))
            blobs.update(map(digest_hex, [*record.diff_ids, *record.blobs]))
    return blobs, layers


def _mark_manifest(store: Store, desc: Descriptor, blobs: set[str], layers: set[str]) -> None:
    """Mark a manifest or index and everything below it."""
    hex_name = digest_hex(desc.digest)
    if hex_name in blobs:
        return
    blobs.add(hex_name)
    if not store.has_blob(desc.digest):
        return  # a dangling ref: nothing below it to keep
    if desc.media_type in INDEX_TYPES:
        for child in _marking(lambda: store.index(desc)).manifests:
            _mark_manifest(store, child, blobs, layers)
    elif desc.media_type in MANIFEST_TYPES:
        manifest = _marking(lambda: store.manifest(desc))
        blobs.add(digest_hex(manifest.config.digest))
        blobs.update(digest_hex(layer.digest) for layer in manifest.layers)
        if store.has_blob(manifest.config.digest):
            diff_ids = _marking(lambda: store.config(manifest)).diff_ids
            layers.update(map(digest_hex, diff_ids))
            blobs.update(map(digest_hex, diff_ids))


def _marking(read: Callable[[], _T]) -> _T:
    """Run a read for prune's mark phase; a corrupt root stops prune before any delete."""
    try:
        return read()
    except (DigestMismatch, InvalidDocument) as exc:
        raise StoreError(
            f"prune stopped, nothing deleted: {exc}", hint="run `stepbuild check`"
        ) from exc


def _sweep_cache(store: Store, cutoff: float,
                 marked: tuple[set[str], set[str]] | None = None) -> int:
    """Remove corrupt and dangling records; with `marked` (blobs, layers), also records
    naming anything outside them."""
    removed = _sweep_dir(store.layout.corrupt, cutoff, lambda name: True)
    for path, record in store.cache_records.scan():
        if record is not None and _cache_kept(store, record, marked):
            continue
        removed += _remove_if_old(path, cutoff)
    return removed


def _cache_kept(store: Store, record: CacheRecord,
                marked: tuple[set[str], set[str]] | None) -> bool:
    if marked is None:
        return all(map(store.has_layer, record.diff_ids)) and all(map(store.has_blob,
                                                                      record.blobs))
    blobs, layers = marked
    return (all(digest_hex(d) in layers for d in record.diff_ids)
            and all(digest_hex(b) in blobs for b in record.blobs))


def _sweep_compressed(store: Store, blobs: set[str], cutoff: float) -> int:
    """Remove the records of unreachable layers (and bad ones) older than `cutoff`; add the
    blobs of the records that stay to `blobs`: a record that stays keeps its compressed
    blob, and its layer blob (a young record of an unreachable layer would otherwise outlive
    the layer it describes)."""
    removed = 0
    for path, desc, hex_name in store.compressed_records.scan():
        if desc is not None and hex_name in blobs:
            blobs.add(digest_hex(desc.digest))
        elif _remove_if_old(path, cutoff):
            removed += 1
        elif desc is not None:
            blobs.update((digest_hex(desc.digest), hex_name))
    return removed


def _sweep_remote(store: Store, marked: set[str]) -> int:
    """Remove corrupt records and those whose content is gone. No grace period: a record is
    only a hint, and every writer holds the store lock that prune holds exclusively. A
    reachable id stays even when absent: an image may name a layer the store only knows to
    be in a registry (push.py pushes it by mounting)."""
    removed = 0
    for path, content_id in store.remote_records.scan():
        if content_id is not None and (digest_hex(content_id) in marked
                                       or _known(store, content_id)):
            continue
        remove_tree(path)
        removed += 1
    return removed


def _sweep_blobs(store: Store, marked: set[str], cutoff: float) -> tuple[int, int]:
    removed = freed = 0
    for entry in os.scandir(store.layout.blobs):
        if entry.name in marked or not is_digest_hex(entry.name):
            continue
        size = entry.stat(follow_symlinks=False).st_size
        if _remove_if_old(Path(entry.path), cutoff):
            removed, freed = removed + 1, freed + size
    return removed, freed


def _sweep_layers(store: Store, marked: set[str], cutoff: float) -> int:
    """Unreferenced layer dirs and staging dirs; renamed into tmp/ before deletion, so a
    crash mid-delete never leaves a partial tree under a layer's name."""

    def unreferenced(name: str) -> bool:
        if STAGING_NAME.fullmatch(name):
            return True
        return is_digest_hex(name) and name not in marked

    return _sweep_dir(store.layout.layers, cutoff, unreferenced, remove=store.discard)


def _sweep_dir(parent: Path, cutoff: float, wanted: Callable[[str], bool],
               remove: Callable[[Path], None] = remove_tree) -> int:
    """Remove the entries of `parent` that `wanted` names and are older than `cutoff`."""
    return sum(
        _remove_if_old(Path(entry.path), cutoff, remove)
        for entry in os.scandir(parent)
        if wanted(entry.name)
    )


def _remove_if_old(path: Path, cutoff: float,
                   remove: Callable[[Path], None] = remove_tree) -> int:
    """Remove `path` if its mtime is before `cutoff`; 1 if removed, else 0."""
    try:
        if path.lstat().st_mtime >= cutoff:
            return 0
        remove(path)
    except FileNotFoundError:
        return 0
    return 1


def _known(store: Store, content_id: str) -> bool:
    """A layer (its dir or tar blob) or a config blob the store holds."""
    return store.has_blob(content_id) or _usable_layer(store, content_id)


def _usable_layer(store: Store, diff_id: str) -> bool:
    """`store.has_layer`, False for a layer dir that is not the store's own (which `check`
    reports as such)."""
    try:
        return store.has_layer(diff_id)
    except StoreError:
        return False


# --- check --------------------------------------------------------------------------------


def check(store: Store, *, deep: bool = False) -> list[str]:
    """Consistency problems, `[]` when the store is sound. Reads everything; slow.

    With `deep`, every layer dir is also compared with its blob, entry by entry
    (`layers.verify`): its files are what builds copy and run, and only the blob is hashed.
    A layer dir that is a symlink or not the store's own is reported and never read.

    Reported: a blob whose content does not match its name; anything `validate_layout` finds
    (a missing oci-layout, index.json, every tagged manifest/config/layer present, sized and
    hashed right, one diff_id per layer); a ref name used twice; a layer dir without its blob
    or without `diff/`, or not the store's own (a symlink, another owner), or with a damaged
    blob; a cache record that does not parse or names a missing layer or blob; a
    compressed-blob record that does not parse or names a missing blob, a blob of another
    size, or a missing layer blob; a remote-blob record that does not parse or whose layer or
    config is not in the store. Not problems: tmp/ entries, layer staging dirs,
    cache/corrupt/, unreferenced blobs (all garbage for `prune`). Holds the store lock shared
    (no prune meanwhile).
    """
    with store.lock(exclusive=False):
        problems, hashed = _check_blobs(store)
        problems += validate_layout(store.root, blob_digests=hashed)
        problems += _check_refs(store)
        blob_ok = _hashed_right(hashed)
        problems += [p.text for p in layer_problems(store, blob_ok, deep=deep)]
        problems += _check_cache(store)
        problems += _check_compressed(store)
        problems += _check_remote(store)
    return problems


def _check_blobs(store: Store) -> tuple[list[str], dict[str, tuple[str, int]]]:
    problems: list[str] = []
    hashed: dict[str, tuple[str, int]] = {}
    for entry in os.scandir(store.layout.blobs):
        if not is_digest_hex(entry.name) or not entry.is_file(follow_symlinks=False):
            problems.append(f"blobs/sha256/{entry.name}: not a blob name")
            continue
        digest, size = sha256_file(entry.path)
        hashed[entry.name] = (digest, size)
        if digest != PREFIX + entry.name:
            problems.append(f"blob {PREFIX}{entry.name}: content has digest {digest}")
    return problems, hashed


def _check_refs(store: Store) -> list[str]:
    try:
        names = [d.ref_name for d in store.read_index().manifests if d.ref_name]
    except StoreError:
        return []  # validate_layout reported it
    return [
        f"index.json: ref {n!r} is used more than once"
        for n in sorted(set(names))
        if names.count(n) > 1
    ]


@dataclass(frozen=True, slots=True)
class LayerProblem:
    """A layer dir that is wrong: `diff_id` None for a name that is no layer's.
    `restorable`: its blob is present and sound, so `repair` can rebuild the dir from it."""

    diff_id: str | None
    text: str
    restorable: bool = False


def _hashed_right(hashed: dict[str, tuple[str, int]]) -> Callable[[str], bool]:
    """Whether a blob is sound, by `_check_blobs`'s hashes (hex → digest, size)."""
    return lambda digest: hashed.get(digest_hex(digest), ("", 0))[0] == digest


def layer_problems(store: Store, blob_ok: Callable[[str], bool],
                   *, deep: bool) -> list[LayerProblem]:
    """The problems of every layer dir; `blob_ok(diff_id)` says whether a present blob's
    content has its digest."""
    problems = []
    for entry in os.scandir(store.layout.layers):
        if STAGING_NAME.fullmatch(entry.name):
            continue
        if not is_digest_hex(entry.name):
            problems.append(LayerProblem(None, f"layers/{entry.name}: not a layer name"))
            continue
        diff_id = PREFIX + entry.name
        problem, restorable = _layer_problem(store, diff_id, blob_ok, deep)
        if problem:
            problems.append(LayerProblem(diff_id, f"layer {diff_id}: {problem}", restorable))
    return problems


def _layer_problem(store: Store, diff_id: str, blob_ok: Callable[[str], bool],
                   deep: bool) -> tuple[str, bool]:
    """What is wrong with one layer dir ("" if nothing), and whether its blob is sound."""
    if not store.has_blob(diff_id):
        return "its blob is missing", False
    if not blob_ok(diff_id):
        return "its blob is damaged (its content has another digest)", False
    try:
        diff = store.layer_dir(diff_id)
    except StoreError as exc:
        return exc.message.removeprefix(f"layer {diff_id}: "), True
    if not diff.is_dir():
        return "no diff/ dir", True
    if not deep:
        return "", True
    try:
        differences = verify_layer_dir(str(diff), store.blob_path(diff_id))
    except LayerError as exc:
        return f"its blob is not a layer tar that can be compared: {exc.message}", False
    return ("differs from its blob: " + "; ".join(differences) if differences else ""), True


def _check_cache(store: Store) -> list[str]:
    problems = []
    for path, record in store.cache_records.scan():
        key = path.stem
        if not CACHE_KEY.fullmatch(key) or path.suffix != ".json":
            problems.append(f"cache/{path.name}: not a cache record name")
        elif record is None:
            problems.append(f"cache record {key}: does not parse")
        else:
            problems += [f"cache record {key}: layer {d} is missing"
                         for d in record.diff_ids if not _usable_layer(store, d)]
            problems += [f"cache record {key}: blob {b} is missing"
                         for b in record.blobs if not store.has_blob(b)]
    return problems


def _check_compressed(store: Store) -> list[str]:
    problems = []
    for path, desc, hex_name in store.compressed_records.scan():
        where = f"compressed/{path.name}"
        if desc is None:
            problems.append(f"{where}: not a valid compressed-blob record")
            continue
        if not store.has_blob(PREFIX + hex_name):
            problems.append(f"{where}: layer blob {PREFIX}{hex_name} is missing")
        if not store.has_blob(desc.digest):
            problems.append(f"{where}: blob {desc.digest} is missing")
        elif store.blob_path(desc.digest).stat().st_size != desc.size:
            problems.append(f"{where}: blob {desc.digest} is not {desc.size} bytes")
    return problems


def _check_remote(store: Store) -> list[str]:
    problems = []
    folder = store.layout.remote_blobs.name
    for path, content_id in store.remote_records.scan():
        where = f"{folder}/{path.name}"
        if content_id is None:
            problems.append(f"{where}: not a valid remote-blob record")
        elif not _known(store, content_id):
            problems.append(f"{where}: names {content_id}, which is neither a layer nor a"
                            " blob in the store")
    return problems
