"""records.py: the cache-record family of the store contract, `CacheRecord` against the dicts
the builder and the team cache wrote before it (same bytes on disk, both ways), the
remote-blob records (push.py and pull.py write them) and the import records (load.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stepbuild.errors import InvalidDocument
from stepbuild.oci.digest import sha256_bytes
from stepbuild.oci.documents import MEDIA_TYPE_LAYER, Descriptor, canonical_json
from stepbuild.store.gc import check
from stepbuild.store.records import CacheRecord, parse_remote_record
from stepbuild.store.store import Store
from tests.store_contract import KEY, Check, build_image, checks_named, commit

HOST = "registry.example:5000"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CREATED = "2026-01-02T03:04:05Z"


@pytest.mark.parametrize("contract", checks_named("cache_record"), ids=lambda c: c.__name__)
def test_contract(contract: Check, tmp_path: Path) -> None:
    contract(Store, tmp_path)


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


# --- CacheRecord: the bytes of the dicts it replaced ------------------------------------------


def built_dict(diff_id: str | None) -> dict[str, Any]:
    """What builder.py wrote for a step it ran (before CacheRecord), field for field."""
    return {"diff_ids": [diff_id] if diff_id else [], "created": CREATED,
            "created_by": "RUN /bin/sh -c make", "inputs": {"kind": "run", "argv": ["make"]},
            "started": 1767323045.25, "finished": 1767323046.5}


def imported_dict(diff_id: str | None) -> dict[str, Any]:
    """What teamcache/cache.py wrote for a team cache hit (before CacheRecord)."""
    return {"diff_ids": [diff_id] if diff_id else [], "created": CREATED,
            "created_by": "COPY . /src", "imported": True}


@pytest.mark.parametrize("old", [built_dict, imported_dict], ids=["built", "imported"])
@pytest.mark.parametrize("layer", [True, False], ids=["layer", "no-layer"])
def test_cache_record_has_the_bytes_of_the_old_dict(old: Any, layer: bool,
                                                    store: Store) -> None:
    diff_id = commit(store, b"one") if layer else None
    written = old(diff_id)
    record = CacheRecord.from_json(written, "test")
    assert record.diff_id == diff_id
    assert canonical_json(record.to_json()) == canonical_json(written)
    store.cache_records.put(KEY, record)
    assert store.cache_records.path(KEY).read_bytes() == canonical_json(written)


def test_add_keeps_the_first_usable_record_of_a_key(store: Store) -> None:
    """Issue 11, item 10: a rerun (--no-cache, a racing build) never replaces the record an
    earlier image was built from."""
    first = CacheRecord((commit(store, b"one"),), CREATED, "RUN make")
    second = CacheRecord((commit(store, b"two"),), "2026-02-03T04:05:06Z", "RUN make")
    assert store.cache_records.add(KEY, first) is first
    assert store.cache_records.add(KEY, second) == first
    assert store.cache_records.get(KEY) == first
    assert [p.name for p in store.layout.tmp.iterdir()] == []  # its temp file is gone


def test_add_replaces_a_record_that_cannot_be_used(store: Store) -> None:
    record = CacheRecord((commit(store, b"one"),), CREATED, "RUN make")
    store.cache_records.path(KEY).write_bytes(b"{not json")
    assert store.cache_records.add(KEY, record) is record
    assert store.cache_records.get(KEY) == record
    gone = CacheRecord((sha256_bytes(b"never committed"),), CREATED, "RUN make")
    store.cache_records.path(KEY).write_bytes(canonical_json(gone.to_json()))
    assert store.cache_records.add(KEY, record) is record
    assert store.cache_records.get(KEY) == record


def test_cache_record_of_an_existing_store_reads_back(store: Store) -> None:
    diff_id = commit(store, b"one")
    store.cache_records.path(KEY).write_bytes(canonical_json(built_dict(diff_id)))
    record = store.cache_records.get(KEY)
    assert record == CacheRecord((diff_id,), CREATED, "RUN /bin/sh -c make",
                                 inputs={"kind": "run", "argv": ["make"]},
                                 started=1767323045.25, finished=1767323046.5)


def test_cache_record_keeps_integer_times_as_written() -> None:
    written = {"diff_ids": [], "created": CREATED, "created_by": "RUN true", "started": 5,
               "finished": 6}
    assert canonical_json(CacheRecord.from_json(written, "t").to_json()) == b'{"created":"' \
        + CREATED.encode() + b'","created_by":"RUN true","diff_ids":[],"finished":6,"started":5}'


def test_cache_record_ignores_fields_it_does_not_know() -> None:
    record = CacheRecord.from_json({"created": CREATED, "created_by": "x", "explain": {}}, "t")
    assert record == CacheRecord((), CREATED, "x")


@pytest.mark.parametrize("bad", [
    [],
    {"created_by": "x"},
    {"created": CREATED, "created_by": 1},
    {"created": CREATED, "created_by": "x", "diff_ids": "sha256:x"},
    {"created": CREATED, "created_by": "x", "blobs": ["sha256:nope"]},
    {"created": CREATED, "created_by": "x", "inputs": []},
    {"created": CREATED, "created_by": "x", "started": "noon"},
    {"created": CREATED, "created_by": "x", "finished": True},
    {"created": CREATED, "created_by": "x", "imported": "yes"},
])
def test_cache_record_refuses_malformed_documents(bad: Any) -> None:
    with pytest.raises(InvalidDocument):
        CacheRecord.from_json(bad, "test")


def test_a_malformed_record_on_disk_is_a_miss_and_a_problem(store: Store) -> None:
    diff_id = commit(store, b"one")
    store.cache_records.path(KEY).write_bytes(b'{"diff_ids": ["%s"]}' % diff_id.encode())
    assert [record for _, record in store.cache_records.scan()] == [None]
    assert check(store) == [f"cache record {KEY}: does not parse"]
    assert store.cache_records.get(KEY) is None  # and moved to cache/corrupt/
    assert check(store) == []


# --- remote-blob records ------------------------------------------------------------------


def remote(content: bytes = b"gz") -> Descriptor:
    """A compressed blob that lives only in the registry."""
    data = b"remote:" + content
    return Descriptor(GZIP_LAYER, sha256_bytes(data), len(data))


def test_remote_records_of_content_in_the_store_are_consistent(store: Store) -> None:
    image = build_image(store)
    manifest = store.manifest(image)
    (diff_id,) = store.config(manifest).diff_ids
    store.remote_records.add(diff_id, remote(), HOST, "team/app")
    store.remote_records.add(manifest.config.digest, manifest.config, HOST, "team/app")
    assert store.remote_records.get(diff_id) == [(remote(), (f"{HOST}/team/app",))]
    assert store.remote_records.path(diff_id).parent == store.root / "remote-blobs"
    assert check(store) == []


def test_a_remote_record_under_another_name_does_not_parse(store: Store) -> None:
    first, second = commit(store, b"one"), commit(store, b"two")
    store.remote_records.add(first, remote(), HOST, "team/app")
    store.remote_records.path(first).rename(store.remote_records.path(second))
    assert store.remote_records.get(second) == []
    with pytest.raises(InvalidDocument):
        parse_remote_record(store.remote_records.path(second).read_bytes(), "x.json")


def test_descriptor_media_types_survive_the_round_trip(store: Store) -> None:
    diff_id = commit(store, b"layer")
    plain = Descriptor(MEDIA_TYPE_LAYER, diff_id, store.blob_path(diff_id).stat().st_size)
    store.remote_records.add(diff_id, plain, HOST, "a")
    store.remote_records.add(diff_id, remote(), HOST, "b")
    assert store.remote_records.get(diff_id) == [(remote(), (f"{HOST}/b",)),
                                                 (plain, (f"{HOST}/a",))]
    assert check(store) == []


def test_remote_sources_are_most_recent_first_and_bounded(store: Store) -> None:
    diff_id = commit(store, b"layer")
    for n in range(10):
        store.remote_records.add(diff_id, remote(), HOST, f"r{n}")
    store.remote_records.add(diff_id, remote(), HOST, "r3")
    ((_, sources),) = store.remote_records.get(diff_id)
    assert sources == tuple(f"{HOST}/r{n}" for n in (3, 9, 8, 7, 6, 5, 4, 2))


# --- import records -----------------------------------------------------------------------


IDENTITY = [1, "oci-archive", "/srv/base.tar", None, 2049, 1234, 10240, 5, 6]


def test_import_records_round_trip(store: Store) -> None:
    digest = sha256_bytes(b"manifest")
    assert store.import_records.get(IDENTITY) is None
    store.import_records.put(IDENTITY, digest)
    assert store.import_records.get(IDENTITY) == digest
    assert store.import_records.get([*IDENTITY[:-1], 7]) is None  # the archive changed
    (path,) = (store.root / "import-cache").iterdir()
    assert path == store.import_records.path(IDENTITY)
    assert path.read_bytes() == canonical_json({"identity": IDENTITY, "digest": digest})
    assert list((store.root / "tmp").iterdir()) == []


@pytest.mark.parametrize("data", [b"{", b"[]", b'{"identity": [], "digest": "x"}',
                                  b'{"identity": IDENTITY, "digest": "sha256:00"}'])
def test_a_bad_import_record_is_a_miss(store: Store, data: bytes) -> None:
    path = store.import_records.path(IDENTITY)
    path.parent.mkdir()
    path.write_bytes(data.replace(b"IDENTITY", canonical_json(IDENTITY)))
    assert store.import_records.get(IDENTITY) is None


# --- push records ------------------------------------------------------------------------------


def test_push_records(tmp_path: Path) -> None:
    from stepbuild.store.gc import prune

    store = Store(tmp_path / "store")
    image, _ = store.put_blob(b"a manifest, as far as records care")
    other = "sha256:" + "1" * 64
    records = store.push_records
    assert records.get(image) == {}
    records.add(image, "r.example/app:1", other)
    records.add(image, "r.example/app:2", "sha256:" + "2" * 64)
    records.add(image, "r.example/app:1", "sha256:" + "3" * 64)  # pushed again: the latest
    assert records.get(image) == {"r.example/app:1": "sha256:" + "3" * 64,
                                  "r.example/app:2": "sha256:" + "2" * 64}
    assert [name for _, name in records.scan()] == [image]
    records.path(other).write_text("{not json")
    assert records.get(other) == {}  # a bad record is no pushes, never an error
    store.grace_period = 0
    prune(store, keep_cache=False)  # nothing tags either: the blob goes, and so do the records
    assert not store.has_blob(image)
    assert list(records.scan()) == []
