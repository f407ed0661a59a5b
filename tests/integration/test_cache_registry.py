"""The registry cache backend (cache_registry.py) against a real docker-registry.

Every writer store has its own tag, so concurrent exports never lose each other's keys; the
main tag is a fold of them that readers trust only for the writer digests it names. Records
here name small random blobs pushed to the repository (a registry refuses a manifest whose
blobs it does not have).
"""

from __future__ import annotations

import gc
import hashlib
import json
import secrets
import threading
from pathlib import Path
from typing import Any

import pytest

from stepbuild.distribution.connection import Connection
from stepbuild.teamcache import registry as cache_registry
from stepbuild.teamcache.cache import TeamCache, parse_cache_spec
from stepbuild.teamcache.records import ARTIFACT_TYPE, CacheError, check_record
from stepbuild.teamcache.registry import (
    TAG_ANNOTATION,
    WRITERS_ANNOTATION,
    RegistryCache,
    writer_id,
    writer_tag,
)
from tests.hostwatch import open_descriptors
from tests.integration import registry_fixture

pytestmark = pytest.mark.root

plain_registry = registry_fixture.plain_registry


class Writer:
    """One store's view of one cache reference, with records for blobs it pushed."""

    def __init__(self, root: Path, ref: str, warnings: list[str] | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.warnings = warnings if warnings is not None else []
        self.cache = RegistryCache(ref, Connection(), root, self.warnings.append)

    def export(self, keys: list[str]) -> None:
        cache = self.cache
        cache.prepare()
        for key in keys:
            cache.put_record(key, self.pushed_record(key))
        cache.finish()

    def pushed_record(self, key: str) -> dict[str, Any]:
        data = secrets.token_bytes(64)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blob = self.root / f"blob-{secrets.token_hex(8)}"  # jobs on one root share keys
        blob.write_bytes(data)
        self.cache.put_file(digest, len(data), blob)
        return {"schema": "stepbuild-cache/1", "key": key, "diff_id": digest,
                "layer": {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                          "digest": digest, "size": len(data)},
                "created": "2023-11-14T22:13:20Z", "created_by": f"RUN {key}"}


def key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def read_keys(ref: str, root: Path) -> tuple[set[str], list[str]]:
    """(every key a fresh reader finds, its warnings), each record checked."""
    warnings: list[str] = []
    reader = RegistryCache(ref, Connection(), root, warnings.append)
    found = set()
    for name in reader._load():
        assert check_record(name, reader.record(name))["key"] == name
        found.add(name)
    return found, warnings


def manifest(ref_host: str, repo: str, tag: str) -> dict[str, Any]:
    registry = Connection().open(ref_host, repo)
    data, _, _ = registry.get_manifest(repo, tag)
    return json.loads(data)


def test_writer_id_is_stable_per_store_and_differs_between_stores(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    first = writer_id(a)
    assert len(first) == 16 and int(first, 16) >= 0
    assert writer_id(a) == first and writer_id(b) != first
    # builds starting at once on a new store agree on one id
    c = tmp_path / "c"
    c.mkdir()
    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.append(writer_id(c))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(ids) == 8


def test_writer_tag_fits_the_tag_limit() -> None:
    assert writer_tag("main", "0123456789abcdef") == "main.w-0123456789abcdef"
    long = writer_tag("t" * 128, "0123456789abcdef")
    assert len(long) == 128 and long.endswith(".w-0123456789abcdef")


def test_two_writers_fold_into_the_main_tag(tmp_path: Path,
                                            plain_registry: registry_fixture.RunningRegistry
                                            ) -> None:
    ref = f"{plain_registry.host}/fold/cache:main"
    one, two = Writer(tmp_path / "one", ref), Writer(tmp_path / "two", ref)
    one.export([key("a"), key("b")])
    two.export([key("c")])
    found, warnings = read_keys(ref, tmp_path / "reader")
    assert found == {key("a"), key("b"), key("c")} and warnings == []
    main = manifest(plain_registry.host, "fold/cache", "main")
    assert main["artifactType"] == ARTIFACT_TYPE
    folded = json.loads(main["annotations"][WRITERS_ANNOTATION])
    assert set(folded) == {writer_tag("main", writer_id(w.root)) for w in (one, two)}
    assert len(main["layers"]) == 3  # the main tag alone references every blob
    own = manifest(plain_registry.host, "fold/cache", writer_tag("main", writer_id(two.root)))
    assert own["annotations"][TAG_ANNOTATION] == "main" and len(own["layers"]) == 1
    # a writer's second export adds to its tag, it does not replace it
    two.export([key("d")])
    assert read_keys(ref, tmp_path / "reader")[0] == {key(n) for n in "abcd"}


def test_export_and_import_leave_no_file_open(tmp_path: Path,
                                             plain_registry: registry_fixture.RunningRegistry
                                             ) -> None:
    # the map's config blob goes through a temp file each way; a build in a long-lived process
    # (the Python API, a test run) must not keep one descriptor per export or import
    ref = f"{plain_registry.host}/fds/cache:main"
    writer = Writer(tmp_path / "one", ref)
    writer.export([key("a")])  # the first export connects; its sockets stay pooled
    before = open_descriptors()
    for name in "bcd":
        writer.export([key(name)])
        assert read_keys(ref, tmp_path / "reader")[0] >= {key("a"), key(name)}
    files = sorted(target for _, target in open_descriptors() - before if target.startswith("/"))
    assert files == []


def test_a_closed_team_cache_holds_no_connection(
        tmp_path: Path, plain_registry: registry_fixture.RunningRegistry) -> None:
    # a build closes its team cache when it ends (build.py): nothing stays open in a process
    # that goes on (the Python API). (It observes only its own build's cache mounts, handed
    # to it by that build: test_in_process checks that none outlives its build.)
    ref = f"{plain_registry.host}/close/cache:main"
    Writer(tmp_path / "one", ref).export([key("a")])
    store = type("Store", (), {"root": tmp_path / "store"})()
    before = open_descriptors()
    team = TeamCache(store, [parse_cache_spec(f"type=registry,ref={ref}", "from")], [],
                     lambda message: None)
    assert team.sources[0][1].record(key("a")) is not None  # connected and read the map
    team.close()
    # the https probe of this plain-HTTP registry failed; urllib3 leaves that socket to the
    # collector (the exception's traceback holds it): not what close() is for
    gc.collect()
    assert [target for _, target in open_descriptors() - before] == []


@pytest.mark.parametrize("tag", ["main", "t" * 128])  # a long tag: writers cut it
def test_a_lost_fold_loses_no_key(tmp_path: Path, tag: str,
                                  plain_registry: registry_fixture.RunningRegistry) -> None:
    # Two folds racing: the one that lands last may not have seen the other's writer tag.
    # Simulated by writing the main tag back as writer one left it.
    ref = f"{plain_registry.host}/lost/cache:{tag}"
    one, two = Writer(tmp_path / "one", ref), Writer(tmp_path / "two", ref)
    one.export([key("a")])
    stale = manifest(plain_registry.host, "lost/cache", tag)
    two.export([key("b")])
    registry = Connection().open(plain_registry.host, "lost/cache")
    registry.put_manifest("lost/cache", tag, json.dumps(stale).encode(),
                          "application/vnd.oci.image.manifest.v1+json")
    found, warnings = read_keys(ref, tmp_path / "reader")
    assert found == {key("a"), key("b")} and warnings == []


def test_more_writers_than_read_is_a_warning(tmp_path: Path,
                                             plain_registry: registry_fixture.RunningRegistry,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ref = f"{plain_registry.host}/crowd/cache:main"
    for i in range(3):
        Writer(tmp_path / f"w{i}", ref).export([key(f"crowd{i}")])
    monkeypatch.setattr(cache_registry, "MAX_WRITERS", 2)
    found, warnings = read_keys(ref, tmp_path / "reader")
    assert found == {key(f"crowd{i}") for i in range(3)}  # the main tag folded them all
    assert len(warnings) == 1 and "3 writer tags; reading the first 2" in warnings[0]


def test_concurrent_writers_keep_every_key(tmp_path: Path,
                                           plain_registry: registry_fixture.RunningRegistry
                                           ) -> None:
    # six writers at once: four stores, one of them used by three builds at once
    ref = f"{plain_registry.host}/many/cache:main"
    roots = [tmp_path / f"store{i}" for i in range(4)]
    jobs = [(roots[min(i, 3)], [key(f"job{i}-{n}") for n in range(3)] + [key("shared")])
            for i in range(6)]
    errors: list[BaseException] = []

    def run(root: Path, keys: list[str]) -> None:
        try:
            Writer(root, ref).export(keys)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    found, warnings = read_keys(ref, tmp_path / "reader")
    assert found == {k for _, keys in jobs for k in keys} and warnings == []
    tags = Connection().open(plain_registry.host, "many/cache").list_tags("many/cache")
    assert sorted(tags) == sorted(["main"] + [writer_tag("main", writer_id(r)) for r in roots])


def test_foreign_and_broken_writer_tags_are_skipped_with_a_warning(
        tmp_path: Path, plain_registry: registry_fixture.RunningRegistry) -> None:
    ref = f"{plain_registry.host}/foreign/cache:main"
    Writer(tmp_path / "one", ref).export([key("a")])
    # a writer tag of another cache whose name was cut to the same prefix
    other = Writer(tmp_path / "other", f"{plain_registry.host}/foreign/cache:main-other")
    other.export([key("b")])
    registry = Connection().open(plain_registry.host, "foreign/cache")
    borrowed = manifest(plain_registry.host, "foreign/cache",
                        writer_tag("main-other", writer_id(other.root)))
    registry.put_manifest("foreign/cache", writer_tag("main", "f" * 16),
                          json.dumps(borrowed).encode(),
                          "application/vnd.oci.image.manifest.v1+json")
    # and a writer tag that is an image config, not a cache
    image = dict(borrowed, artifactType="application/vnd.example")
    registry.put_manifest("foreign/cache", writer_tag("main", "e" * 16),
                          json.dumps(image).encode(),
                          "application/vnd.oci.image.manifest.v1+json")
    found, warnings = read_keys(ref, tmp_path / "reader")
    assert found == {key("a")}
    assert len(warnings) == 2, warnings
    assert any("belongs to another cache ('main-other')" in w for w in warnings)
    assert any("is not a stepbuild cache" in w for w in warnings)


def test_a_digest_reference_is_read_but_never_written(
        tmp_path: Path, plain_registry: registry_fixture.RunningRegistry) -> None:
    ref = f"{plain_registry.host}/pinned/cache:main"
    Writer(tmp_path / "one", ref).export([key("a")])
    _, _, digest = Connection().open(plain_registry.host, "pinned/cache").get_manifest(
        "pinned/cache", "main")
    pinned = f"{plain_registry.host}/pinned/cache@{digest}"
    assert read_keys(pinned, tmp_path / "reader")[0] == {key("a")}
    with pytest.raises(CacheError, match="a digest is not a tag"):
        Writer(tmp_path / "two", pinned).cache.prepare()
