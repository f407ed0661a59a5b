"""prune and check with layer dirs and tmp/ leftovers 10,000 directories deep (issue 11 item
11): a crashed step's deep upper dir in tmp/ is garbage prune deletes, not a crash; check
stays clean. On tmpfs where there is one (tests/deeptrees.py)."""

from __future__ import annotations

from pathlib import Path

from stepbuild.layers.tar import END_OF_ARCHIVE
from stepbuild.oci.digest import sha256_bytes
from stepbuild.store.gc import check, prune
from stepbuild.store.store import Store
from tests.deeptrees import LEVELS, chain_depth, fast_tmp_dir, nest


def test_prune_and_check_a_store_with_deep_trees(tmp_path: Path) -> None:
    with fast_tmp_dir(tmp_path) as here:
        store = Store(here / "store", grace_period=0)  # as `stepbuild prune` opens it
        upper = store.tmp_dir("upper-")
        nest(upper)
        tar = store.tmp_file("layer-")  # the store does not read the tar's entries: kept small
        tar.write_bytes(END_OF_ARCHIVE)
        layer_dir = store.commit_layer(upper, sha256_bytes(END_OF_ARCHIVE), tar)
        assert chain_depth(layer_dir) == (LEVELS, b"bottom\n")
        nest(store.tmp_dir("step-"))  # what a killed build leaves behind
        assert check(store) == []
        stats = prune(store)  # nothing is tagged: the layer goes too
        assert (stats.layers, stats.tmp_entries) == (1, 1)
        assert check(store) == []
        assert list(store.layout.tmp.iterdir()) == []
        assert list(store.layout.layers.iterdir()) == []
