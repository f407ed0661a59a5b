"""Remote-blob records (`<store>/remote-blobs/<hex>.json`, written by transfer.py): `check`
reports the bad ones and those of content the store lacks; `prune` removes them once their
layer or config is gone, and the corrupt ones; transfer.py reads them with the same parser."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stepbuild.distribution.transfer import record_remote_blob, remote_blobs
from stepbuild.errors import InvalidDocument
from stepbuild.oci.digest import digest_hex, sha256_bytes
from stepbuild.oci.documents import MEDIA_TYPE_LAYER, Descriptor
from stepbuild.store.store import REMOTE_DIR, Store, parse_remote_record
from tests.store_contract import build_image, commit

HOST = "registry.example:5000"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def remote(content: bytes = b"gz") -> Descriptor:
    """A compressed blob that lives only in the registry."""
    data = b"remote:" + content
    return Descriptor(GZIP_LAYER, sha256_bytes(data), len(data))


def record_path(store: Store, content_id: str) -> Path:
    return store.root / REMOTE_DIR / f"{digest_hex(content_id)}.json"


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store", grace_period=0)  # as `stepbuild prune` opens it


def test_records_of_content_in_the_store_are_consistent(store: Store) -> None:
    image = build_image(store)
    manifest = store.manifest(image)
    (diff_id,) = store.config(manifest).diff_ids
    record_remote_blob(store, diff_id, remote(), HOST, "team/app")
    record_remote_blob(store, manifest.config.digest, manifest.config, HOST, "team/app")
    assert remote_blobs(store, diff_id) == [(remote(), (f"{HOST}/team/app",))]
    assert store.check() == []


def test_check_reports_a_record_of_a_layer_the_store_lacks(store: Store) -> None:
    absent = sha256_bytes(b"never committed")
    record_remote_blob(store, absent, remote(), HOST, "team/app")
    (problem,) = store.check()
    assert problem.startswith(f"{REMOTE_DIR}/{digest_hex(absent)}.json: names {absent}")


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
    record = record_path(store, diff_id)
    record.parent.mkdir()
    blob = remote().digest
    record.write_bytes(data.replace(b"ID", diff_id.encode()).replace(b"DIGEST", blob.encode()))
    assert store.check() == [f"{REMOTE_DIR}/{record.name}: not a valid remote-blob record"]
    assert remote_blobs(store, diff_id) == []


def test_a_record_under_another_name_is_corrupt(store: Store) -> None:
    first, second = commit(store, b"one"), commit(store, b"two")
    record_remote_blob(store, first, remote(), HOST, "team/app")
    record_path(store, first).rename(record_path(store, second))
    assert store.check() == [f"{REMOTE_DIR}/{digest_hex(second)}.json: not a valid"
                             " remote-blob record"]
    with pytest.raises(InvalidDocument):
        parse_remote_record(record_path(store, second).read_bytes(), "x.json")


def test_prune_removes_the_records_of_layers_it_removes_and_corrupt_ones(store: Store) -> None:
    tagged = build_image(store, b"kept")
    store.tag("kept:1", tagged)
    kept = store.manifest(tagged)
    gone = store.manifest(build_image(store, b"gone"))  # untagged: prune takes it
    for manifest in (kept, gone):
        (diff_id,) = store.config(manifest).diff_ids
        record_remote_blob(store, diff_id, remote(diff_id.encode()), HOST, "team/app")
        record_remote_blob(store, manifest.config.digest, manifest.config, HOST, "team/app")
    corrupt = store.root / REMOTE_DIR / f"{'0' * 64}.json"
    corrupt.write_bytes(b"{")

    stats = store.prune(keep_cache=False)

    assert stats.remote_records == 3  # gone's layer and config, and the corrupt one
    assert sorted(p.name for p in (store.root / REMOTE_DIR).iterdir()) == sorted(
        f"{digest_hex(d)}.json" for d in (*store.config(kept).diff_ids, kept.config.digest))
    assert store.check() == []


def test_prune_keeps_the_record_of_a_reachable_layer_known_only_remotely(store: Store) -> None:
    """The lazy case (transfer.py): a tagged image names a layer whose blob only a registry
    holds; the record is what lets a push mount it, so prune must keep it."""
    image = build_image(store)
    store.tag("lazy:1", image)
    (diff_id,) = store.config(store.manifest(image)).diff_ids
    record_remote_blob(store, diff_id, remote(), HOST, "team/app")
    shutil.rmtree(store.layer_dir(diff_id))  # as test_push_pull.py's lazy store
    store.blob_path(diff_id).unlink()

    assert store.prune(keep_cache=False).remote_records == 0
    assert remote_blobs(store, diff_id) == [(remote(), (f"{HOST}/team/app",))]


def test_descriptor_media_types_survive_the_round_trip(store: Store) -> None:
    diff_id = commit(store, b"layer")
    plain = Descriptor(MEDIA_TYPE_LAYER, diff_id, store.blob_path(diff_id).stat().st_size)
    record_remote_blob(store, diff_id, plain, HOST, "a")
    record_remote_blob(store, diff_id, remote(), HOST, "b")
    assert remote_blobs(store, diff_id) == [(remote(), (f"{HOST}/b",)),
                                            (plain, (f"{HOST}/a",))]
    assert store.check() == []
