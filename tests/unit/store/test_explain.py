"""store/explain.py: material per key and last builds per tag, written atomically, read as
absent when bad, pruned with their cache record, and an unchanged build never rewritten."""

from __future__ import annotations

import os
from pathlib import Path

from stepbuild.store.explain import LAST, ExplainRecords
from stepbuild.store.gc import prune
from stepbuild.store.records import CacheRecord
from stepbuild.store.store import Store

KEY = "0" * 32
OTHER = "1" * 32


def test_material_round_trips_and_bad_keys_are_ignored(tmp_path: Path) -> None:
    records = ExplainRecords(Store(tmp_path))
    records.put_material(KEY, {"text": "RUN make"})
    assert records.material(KEY) == {"text": "RUN make"}
    assert records.material(OTHER) is None
    records.put_material("../escape", {"x": 1})
    assert records.material("../escape") is None
    assert not (tmp_path / "escape.json").exists()
    assert [(key, found) for key, found, _ in records.scan_material()] == \
        [(KEY, {"text": "RUN make"})]


def test_a_file_that_does_not_parse_reads_as_absent(tmp_path: Path) -> None:
    records = ExplainRecords(Store(tmp_path))
    records.put_material(KEY, {"text": "RUN make"})
    (tmp_path / "explain" / f"{KEY}.json").write_bytes(b"{not json")
    assert records.material(KEY) is None
    assert list(records.scan_material()) == []


def test_a_build_is_saved_under_each_name_and_last(tmp_path: Path) -> None:
    records = ExplainRecords(Store(tmp_path))
    build = {"steps": [{"key": KEY, "cached": True}]}
    records.put_build(["app:1", "app:latest"], build)
    assert records.last_build("app:1") == records.last_build(LAST) == build
    assert records.last_build("app:latest") == build
    assert records.last_build("other") is None


def test_an_unchanged_build_is_not_rewritten(tmp_path: Path) -> None:
    records = ExplainRecords(Store(tmp_path))
    records.put_build(["app"], {"steps": []})
    before = {p.name: os.stat(p).st_ino for p in (tmp_path / "builds").iterdir()}
    records.put_build(["app"], {"steps": []})
    assert {p.name: os.stat(p).st_ino for p in (tmp_path / "builds").iterdir()} == before


def test_prune_removes_the_material_of_records_gone(tmp_path: Path) -> None:
    store = Store(tmp_path, grace_period=0)
    store.cache_records.put(KEY, CacheRecord((), "2024-01-01T00:00:00Z", "RUN true"))
    records = ExplainRecords(store)
    records.put_material(KEY, {"text": "RUN true"})
    records.put_material(OTHER, {"text": "RUN gone"})  # its record is gone already
    prune(store, keep_cache=True)
    assert records.material(KEY) == {"text": "RUN true"}
    assert records.material(OTHER) is None
    (tmp_path / "cache" / f"{KEY}.json").unlink()  # as a prune of its layer would
    prune(store)
    assert records.material(KEY) is None
