"""`stepbuild check --repair`: put back what the store can rebuild from its own verified blobs.

Repaired:
- a missing `oci-layout` is written again;
- a layer dir that differs from its blob (`check --deep`), is a symlink or otherwise not the
  store's own, or has no `diff/`, is rebuilt from its blob: applied into tmp/ on the layers
  below it in a tagged image (they lend attributes to the dirs the tar does not list, as at
  pull time), verified against the blob, then renamed over the old dir (moved away, never
  followed). A layer no tagged image uses has no known layers below it, so it is not rebuilt
  but removed with the cache records naming it: those steps run again and commit it afresh.

Not repairable: a layer whose blob is missing or damaged. Its dir is moved out of the store
(a layer with unknown bytes is worse than none), a damaged blob too (so that a pull fetches it
again rather than reuse it), and the report says to pull, load or build the image again.
Everything else `check` reports is left alone (garbage is `prune`'s, the rest the user's).

Holds the store lock exclusively: no build is using a layer dir while it is replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stepbuild.errors import StepbuildError, StoreError
from stepbuild.fs.trees import remove_tree
from stepbuild.layers.apply import apply_layer
from stepbuild.layers.verify import verify_layer_dir
from stepbuild.oci.digest import digest_hex, sha256_file
from stepbuild.oci.documents import INDEX_TYPES, MANIFEST_TYPES
from stepbuild.store.gc import LayerProblem, layer_problems

if TYPE_CHECKING:
    from stepbuild.oci.documents import Descriptor
    from stepbuild.store.store import Store

_REPULL = "pull, load or build the images that use it again"


@dataclass(slots=True)
class Repairs:
    """What `repair` did (`done`) and what it could not do, with what to do (`failed`)."""

    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def repair(store: Store) -> Repairs:
    """Repair what the module docstring lists; report it. A layer that cannot be rebuilt
    (its blob no longer applies, or differs from what it applies to) is reported in `failed`
    and the others are still repaired; OSError from the filesystem passes through."""
    repairs = Repairs()
    with store.lock(exclusive=True):
        if not store.layout.oci_layout.exists():
            store.write_oci_layout()
            repairs.done.append("oci-layout: written")
        chains = _image_chains(store)
        bad = layer_problems(store, lambda digest: _hashes_to(store, digest), deep=True)
        for problem in sorted(bad, key=lambda p: _height(p.diff_id, chains)):
            if problem.diff_id is None:
                continue
            try:
                _repair_layer(store, problem, chains, repairs)
            except StepbuildError as exc:  # e.g. a blob that no longer applies: say, go on
                repairs.failed.append(f"{problem.text}: not rebuilt: {exc.message}")
    return repairs


def _hashes_to(store: Store, digest: str) -> bool:
    """Whether the (present) blob's content has its digest."""
    return sha256_file(store.blob_path(digest))[0] == digest


def _repair_layer(store: Store, problem: LayerProblem, chains: list[tuple[str, ...]],
                  repairs: Repairs) -> None:
    diff_id = problem.diff_id
    assert diff_id is not None
    if not problem.restorable:
        store.discard(_layer_entry(store, diff_id))
        if store.has_blob(diff_id):
            store.discard(store.blob_path(diff_id))
        repairs.failed.append(f"{problem.text}: cannot restore it; moved the layer out of the"
                              f" store — {_REPULL}")
        return
    below = _below(diff_id, chains)
    if below is None:
        removed = _forget(store, diff_id)
        repairs.done.append(f"layer {diff_id}: no image uses it; removed it and the {removed}"
                            " cache records naming it (those steps run again)")
        return
    _restore(store, diff_id, [store.layer_dir(d) for d in reversed(below)])
    repairs.done.append(f"layer {diff_id}: restored from its blob")


def _restore(store: Store, diff_id: str, lowers: list[Path]) -> None:
    """Apply the blob into tmp/, verify the result, and rename it over the layer dir."""
    target = store.tmp_dir("repair-")
    try:
        blob = store.blob_path(diff_id)
        apply_layer(blob, target, lowers=lowers, label=f"layer {diff_id}")
        differences = verify_layer_dir(str(target), blob)
        if differences:
            raise StoreError(f"layer {diff_id}: rebuilt from its blob, it still differs from"
                             f" it: {'; '.join(differences)}")
        store.replace_layer(diff_id, target)
    except BaseException:
        remove_tree(target, best_effort=True)
        raise


def _forget(store: Store, diff_id: str) -> int:
    """Remove a layer dir and the cache records naming it; how many records."""
    store.discard(_layer_entry(store, diff_id))
    removed = 0
    for path, record in store.cache_records.scan():
        if record is not None and diff_id in record.diff_ids:
            store.discard(path)
            removed += 1
    return removed


def _image_chains(store: Store) -> list[tuple[str, ...]]:
    """The diff_ids of every tagged image (bottom first); unreadable ones left out (`check`
    reports them)."""
    chains: list[tuple[str, ...]] = []
    for desc in store.read_index().manifests:
        _add_chains(store, desc, chains)
    return chains


def _add_chains(store: Store, desc: Descriptor, chains: list[tuple[str, ...]]) -> None:
    try:
        if desc.media_type in INDEX_TYPES:
            for child in store.index(desc).manifests:
                _add_chains(store, child, chains)
        elif desc.media_type in MANIFEST_TYPES:
            chains.append(tuple(store.config(store.manifest(desc)).diff_ids))
    except StoreError:
        pass


def _below(diff_id: str, chains: list[tuple[str, ...]]) -> tuple[str, ...] | None:
    """The layers under `diff_id` in the first image that has it, None if none has it."""
    for chain in chains:
        if diff_id in chain:
            return chain[: chain.index(diff_id)]
    return None


def _height(diff_id: str | None, chains: list[tuple[str, ...]]) -> int:
    """How many layers lie under `diff_id` (lowest first: a layer is rebuilt on sound lowers)."""
    below = _below(diff_id, chains) if diff_id else None
    return len(below) if below is not None else 1 << 30


def _layer_entry(store: Store, diff_id: str) -> Path:
    """`layers/<hex>` itself, whatever it is (a symlink is moved, never followed)."""
    return store.layout.layers / digest_hex(diff_id)
