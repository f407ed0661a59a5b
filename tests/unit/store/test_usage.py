"""store/usage.py and gc.plan/prune with a policy, on a real store: the census (`du`), the
split of each image's bytes into exclusive and shared, last use (a hit refreshes it), and the
least recently used records going first."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from stepbuild.oci.digest import digest_hex
from stepbuild.oci.documents import MEDIA_TYPE_LAYER, ContainerConfig, Descriptor, ImageConfig
from stepbuild.store.gc import check, plan, prune, reached_by_tag
from stepbuild.store.policy import Policy
from stepbuild.store.sizes import Sizer
from stepbuild.store.store import Store
from stepbuild.store.usage import census, image_usage
from tests.store_contract import cache_record, commit

NOW = 2_000_000_000.0
HOUR = 3600.0
KEYS = {name: f"{i:032x}" for i, name in enumerate(["builder", "app1", "app2", "app3"], 1)}


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store", grace_period=0)  # as `stepbuild prune` opens it


def image(store: Store, *diff_ids: str, cmd: str = "true") -> Descriptor:
    config = ImageConfig("amd64", "linux", ContainerConfig(cmd=(cmd,)), diff_ids=diff_ids)
    return store.put_image(config, [store.descriptor(d, MEDIA_TYPE_LAYER) for d in diff_ids])


def used(store: Store, key: str, hours_ago: float) -> None:
    """Give the record of `key` a fake last use, `hours_ago` before NOW."""
    then = NOW - hours_ago * HOUR
    os.utime(store.cache_records.path(key), (then, then))


def test_census_adds_up_to_what_the_root_spends(store: Store) -> None:
    base = commit(store, b"base" * 4000)
    store.cache_records.put(KEYS["builder"], cache_record(base))
    counted = census(store.layout)
    assert counted.total.disk == Sizer().measure(store.root).disk
    assert set(counted.kinds) == {"layers", "blobs", "cache records", "cache mounts",
                                  "parse and context caches", "tmp", "other"}
    assert counted.content(digest_hex(base)).disk > 16000  # its tar blob and its dir
    assert counted.kinds["cache records"].disk > 0


def test_images_split_into_exclusive_and_shared(store: Store) -> None:
    base, one, two = (commit(store, c * 3000) for c in (b"base", b"one", b"two"))
    store.tag("one", image(store, base, one))
    store.tag("two", image(store, base, two, cmd="two"))
    counted = census(store.layout)
    by_name = {u.name: u for u in image_usage(reached_by_tag(store), counted)}
    base_size = counted.content(digest_hex(base))
    assert by_name["one"].shared == by_name["two"].shared == base_size
    for name, layer in (("one", one), ("two", two)):  # its layer, manifest and config
        own = counted.content(digest_hex(layer)).disk
        assert own < by_name[name].exclusive.disk < own + base_size.disk


def test_a_cache_hit_refreshes_the_records_last_use(store: Store) -> None:
    layer = commit(store, b"layer")
    store.cache_records.put(KEYS["app1"], cache_record(layer))
    path = store.cache_records.path(KEYS["app1"])
    week_ago = time.time() - 7 * 24 * HOUR
    os.utime(path, (week_ago, week_ago))
    data = path.read_bytes()
    assert store.cache_records.get(KEYS["app1"]) is not None
    assert path.stat().st_mtime > week_ago + 6 * 24 * HOUR  # used now
    assert path.read_bytes() == data  # touched, not rewritten
    os.utime(path, (week_ago, week_ago))
    assert store.cache_records.get(KEYS["app2"]) is None  # a miss touches nothing
    assert path.stat().st_mtime == week_ago


def runner_store(store: Store) -> dict[str, str]:
    """A builder layer used by every app build, three app layers, each with its record."""
    layers = {name: commit(store, name.encode() * 5000) for name in KEYS}
    for name, key in KEYS.items():
        store.cache_records.put(key, cache_record(layers[name]))
    used(store, KEYS["app1"], 300)
    used(store, KEYS["app2"], 200)
    used(store, KEYS["app3"], 100)
    used(store, KEYS["builder"], 1)  # every build hits it
    return layers


def test_keep_storage_removes_the_least_recently_used_first(store: Store) -> None:
    layers = runner_store(store)
    counted = census(store.layout)
    app = counted.content(digest_hex(layers["app1"])).disk
    limit = counted.total.disk - app - app // 2  # two app layers must go
    planned = plan(store, Policy(keep_storage=limit), now=NOW)
    assert planned.evicted == (KEYS["app1"], KEYS["app2"])
    assert planned.before == counted.total.disk
    stats = prune(store, policy=Policy(keep_storage=limit), now=NOW)
    assert stats.cache_records == 2 and stats.layers == 2
    assert stats.disk_freed == planned.freed
    after = census(store.layout).total.disk
    assert after == planned.after <= limit
    assert store.cache_records.get(KEYS["builder"]) is not None
    assert store.cache_records.get(KEYS["app3"]) is not None
    assert check(store) == []


def test_default_policy_keeps_what_was_used_within_48_hours(store: Store) -> None:
    runner_store(store)
    used(store, KEYS["app3"], 47)
    stats = prune(store, policy=Policy(), now=NOW)
    assert stats.cache_records == 2  # app1 (300 h), app2 (200 h)
    assert sorted(p.stem for p, _ in store.cache_records.scan()) == sorted(
        [KEYS["builder"], KEYS["app3"]])


def test_dry_run_plan_changes_nothing(store: Store) -> None:
    runner_store(store)
    before = sorted(os.listdir(store.root / "cache")), sorted(os.listdir(store.root / "layers"))
    planned = plan(store, Policy(everything=True), now=NOW)
    assert len(planned.evicted) == 4 and planned.freed > 4 * 20000
    assert (sorted(os.listdir(store.root / "cache")),
            sorted(os.listdir(store.root / "layers"))) == before


def test_all_keeps_the_tags(store: Store) -> None:
    layers = runner_store(store)
    store.tag("app", image(store, layers["builder"], layers["app3"]))
    prune(store, policy=Policy(everything=True), now=NOW)
    assert list(store.cache_records.scan()) == []
    assert store.has_layer(layers["builder"]) and store.has_layer(layers["app3"])
    assert not store.has_layer(layers["app1"])
    assert check(store) == []
