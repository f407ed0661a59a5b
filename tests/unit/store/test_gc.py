"""gc.py: the prune and check families of the store contract (tests/store_contract.py), and
what prune and check do with remote-blob records: `check` reports the bad ones and those of
content the store lacks; `prune` removes them once their layer or config is gone, and the
corrupt ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stepbuild.oci.digest import digest_hex, sha256_bytes
from stepbuild.oci.documents import Descriptor
from stepbuild.store.gc import check, prune
from stepbuild.store.store import Store
from tests.store_contract import Check, build_image, checks_named, commit

HOST = "registry.example:5000"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@pytest.mark.parametrize("contract", checks_named("prune", "check"), ids=lambda c: c.__name__)
def test_contract(contract: Check, tmp_path: Path) -> None:
    contract(Store, tmp_path)


def remote(content: bytes = b"gz") -> Descriptor:
    """A compressed blob that lives only in the registry."""
    data = b"remote:" + content
    return Descriptor(GZIP_LAYER, sha256_bytes(data), len(data))


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store", grace_period=0)  # as `stepbuild prune` opens it


def test_check_reports_a_record_of_a_layer_the_store_lacks(store: Store) -> None:
    absent = sha256_bytes(b"never committed")
    store.remote_records.add(absent, remote(), HOST, "team/app")
    (problem,) = check(store)
    assert problem.startswith(f"remote-blobs/{digest_hex(absent)}.json: names {absent}")


@pytest.mark.parametrize("data", [
    b"{not json",
    b"[]",
    b'{"blobs": []}',  # no id
    b'{"id": "ID", "blobs": {}}',
    b'{"id": "ID", "blobs": [{"mediaType": "x/y", "digest": "sha256:00", "size": 1,'
    b' "sources": []}]}',  # a bad descriptor
    b'{"id": "ID", "blobs": [{"mediaType": "x/y", "digest": "DIGEST", "size": 1}]}',
])
def test_check_reports_a_corrupt_record_and_readers_ignore_it(store: Store, data: bytes) -> None:
    diff_id = commit(store, b"layer")
    record = store.remote_records.path(diff_id)
    record.parent.mkdir()
    blob = remote().digest
    record.write_bytes(data.replace(b"ID", diff_id.encode()).replace(b"DIGEST", blob.encode()))
    assert check(store) == [f"remote-blobs/{record.name}: not a valid remote-blob record"]
    assert store.remote_records.get(diff_id) == []


def test_check_reports_a_record_under_another_name(store: Store) -> None:
    first, second = commit(store, b"one"), commit(store, b"two")
    store.remote_records.add(first, remote(), HOST, "team/app")
    store.remote_records.path(first).rename(store.remote_records.path(second))
    assert check(store) == [f"remote-blobs/{digest_hex(second)}.json: not a valid"
                            " remote-blob record"]


def test_prune_removes_the_records_of_layers_it_removes_and_corrupt_ones(store: Store) -> None:
    tagged = build_image(store, b"kept")
    store.tag("kept:1", tagged)
    kept = store.manifest(tagged)
    gone = store.manifest(build_image(store, b"gone"))  # untagged: prune takes it
    for manifest in (kept, gone):
        (diff_id,) = store.config(manifest).diff_ids
        store.remote_records.add(diff_id, remote(diff_id.encode()), HOST, "team/app")
        store.remote_records.add(manifest.config.digest, manifest.config, HOST, "team/app")
    corrupt = store.layout.remote_blobs / f"{'0' * 64}.json"
    corrupt.write_bytes(b"{")

    stats = prune(store, keep_cache=False)

    assert stats.remote_records == 3  # gone's layer and config, and the corrupt one
    assert sorted(p.name for p in store.layout.remote_blobs.iterdir()) == sorted(
        f"{digest_hex(d)}.json" for d in (*store.config(kept).diff_ids, kept.config.digest))
    assert check(store) == []


def test_prune_keeps_the_record_of_a_reachable_layer_known_only_remotely(store: Store) -> None:
    """The lazy case (push.py): a tagged image names a layer whose blob only a registry
    holds; the record is what lets a push mount it, so prune must keep it."""
    image = build_image(store)
    store.tag("lazy:1", image)
    (diff_id,) = store.config(store.manifest(image)).diff_ids
    store.remote_records.add(diff_id, remote(), HOST, "team/app")
    shutil.rmtree(store.layer_dir(diff_id))  # as test_push_pull.py's lazy store
    store.blob_path(diff_id).unlink()

    assert prune(store, keep_cache=False).remote_records == 0
    assert store.remote_records.get(diff_id) == [(remote(), (f"{HOST}/team/app",))]
