"""`stepbuild cache ls|du|prune` on real team caches (issue 16: shared caches grow forever).

Two writers (two stores) export into one cache: A an older build, B the newest. A prune with
`--filter until=<a time between the two exports>` drops A's keys; a fresh builder still gets
every step of B's build CACHED; `--dry-run` changes nothing. In a registry (Debian's
docker-registry), the writer tags are folded into TAG and deleted, and the registry's own
garbage collector, run with the registry stopped, then frees A's blobs: its storage shrinks,
and a fresh builder after the GC is still CACHED. In a shared directory the files go at once.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from stepbuild.distribution.connection import Connection
from tests.integration import registry_fixture
from tests.integration.builds import (
    Stepbuild,
    build_app,
    step_lines,
    store_with_base,
    write_context,
)

pytestmark = pytest.mark.root

plain_registry = registry_fixture.plain_registry

OLD = ("FROM base\n"
       "RUN head -c 400000 /dev/urandom > /old-big\n"
       "RUN echo old > /old\n")
NEW = ("FROM base\n"
       "RUN head -c 200000 /dev/urandom > /new-big\n"
       "COPY data.txt /data.txt\n"
       "RUN cat /data.txt > /copy\n")


def cache_keys(sb: Stepbuild, spec: str) -> dict[str, dict[str, Any]]:
    """`cache ls --json`: key → its line."""
    out = sb("cache", "ls", "--cache", spec, "--json").stdout
    return {line["key"]: line for line in map(json.loads, out.splitlines())}


def two_writers(work: Path, spec: str) -> tuple[float, dict[str, dict[str, Any]], Path]:
    """A exports OLD, then B exports NEW, to `spec`: (a time between the two exports, the
    keys after both, B's context)."""
    a = store_with_base(work, "writer-a")
    build_app(a, write_context(work / "ctx-old", OLD), "--cache-to", spec)
    between = time.time()
    b = store_with_base(work, "writer-b")
    context = write_context(work / "ctx-new", NEW, {"data.txt": "new\n"})
    _, stderr = build_app(b, context, "--cache-to", spec)
    assert step_lines(stderr)[-3:] == ["DONE"] * 3
    return between, cache_keys(b, spec.replace("dest=", "src=")), context


def fresh_build_is_cached(work: Path, name: str, context: Path, spec: str) -> None:
    sb = store_with_base(work, name)
    _, stderr = build_app(sb, context, "--cache-from", spec)
    assert step_lines(stderr)[-3:] == ["CACHED"] * 3, stderr


def blob_bytes(storage: Path) -> int:
    return sum(p.stat().st_size for p in storage.rglob("*") if p.is_file())


def old_and_new(keys: dict[str, dict[str, Any]], between: float
                ) -> tuple[set[str], set[str]]:
    """(keys exported before `between`, after)."""
    from datetime import datetime

    def when(line: dict[str, Any]) -> float:
        return datetime.fromisoformat(line["last_used"].replace("Z", "+00:00")).timestamp()

    old = {k for k, line in keys.items() if when(line) < between}
    return old, set(keys) - old


def test_registry_prune_folds_writers_and_the_gc_frees_the_old_blobs(tmp_path: Path) -> None:
    reg_dir = tmp_path / "registry"
    with registry_fixture.start_registry(reg_dir) as registry:
        ref = f"{registry.host}/team/app:cache"
        spec = f"type=registry,ref={ref}"
        between, keys, context = two_writers(tmp_path, spec)
        assert len(keys) == 5 and len({w for k in keys.values() for w in k["writers"]}) == 3
        old = {k for k, line in keys.items() if "old" in line["created_by"]}
        assert len(old) == 2
        old_blobs = {d for k in old for d in keys[k]["blobs"]}
        tags_before = _tags(registry.host)
        assert len(tags_before) == 3  # TAG and two writer tags

        cli = Stepbuild(tmp_path / "cli-store")
        until = f"until={between}"
        dry = cli("cache", "prune", "--cache", spec, "--filter", until, "--dry-run").stdout
        assert "would remove 2 keys" in dry
        assert _tags(registry.host) == tags_before  # --dry-run changed nothing
        assert cache_keys(cli, spec) == keys
        du = cli("cache", "du", "--cache", spec, "--filter", until).stdout
        assert "in 5 keys" in du and "(2 keys, after the registry garbage-collects)" in du

        done = cli("cache", "prune", "--cache", spec, "--filter", until, "-f").stdout
        assert "removed 2 keys; deleted 3 manifests" in done, done
        after = cache_keys(cli, spec)
        assert set(after) == set(keys) - old
        assert set(_tags(registry.host)) == {"cache"}  # the writer tags are folded away
        fresh_build_is_cached(tmp_path, "fresh-1", context, spec)
        before_gc = blob_bytes(registry.storage / "docker/registry/v2/blobs")
    # The registry is stopped: its garbage collector may run (docs: read-only or stopped).
    gc = subprocess.run([registry_fixture.REGISTRY_BIN, "garbage-collect",
                         str(reg_dir / "config.yml")], capture_output=True, text=True, check=False)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    blobs = registry.storage / "docker/registry/v2/blobs/sha256"
    assert blob_bytes(blobs) < before_gc - 400_000  # OLD's random layer is gone, at least
    for digest in old_blobs:
        hexdigest = digest.split(":")[1]
        assert not (blobs / hexdigest[:2] / hexdigest / "data").exists()
    for line in after.values():  # every blob a kept key needs is still there
        for digest in line["blobs"]:
            hexdigest = digest.split(":")[1]
            assert (blobs / hexdigest[:2] / hexdigest / "data").is_file()
    with registry_fixture.start_registry(reg_dir) as again:  # same storage, another port
        fresh_build_is_cached(tmp_path, "fresh-2", context,
                              f"type=registry,ref={again.host}/team/app:cache")


def _tags(host: str) -> dict[str, str]:
    """tag → manifest digest, in team/app."""
    registry = Connection().open(host, "team/app")
    try:
        found = {}
        for tag in registry.list_tags("team/app"):
            head = registry.head_manifest("team/app", tag)
            if head is not None:
                found[tag] = head[0]
        return found
    finally:
        registry.close()


def test_local_prune_removes_files_and_keeps_the_newest_build(tmp_path: Path) -> None:
    cache = tmp_path / "shared-cache"
    between, keys, context = two_writers(tmp_path, f"type=local,dest={cache}")
    spec = f"type=local,src={cache}"
    old, new = old_and_new(keys, between)
    assert len(old) == 2 and len(new) == 3
    cli = Stepbuild(tmp_path / "cli-store")
    listing = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}

    out = cli("cache", "prune", "--cache", spec, "--filter", f"until={between}",
              "--dry-run").stdout
    assert "would remove 2 keys" in out
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == listing

    refused = cli("cache", "prune", "--cache", spec, "--filter", f"until={between}",
                  input="n\n").stdout
    assert "nothing removed" in refused
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == listing

    done = cli("cache", "prune", "--cache", spec, "--filter", f"until={between}", "-f").stdout
    assert "removed 2 keys" in done
    assert set(cache_keys(cli, spec)) == new
    assert {p.stem for p in (cache / "keys").glob("*.json")} == new
    gone = {d for k in old for d in keys[k]["blobs"]}
    kept = {d for k in new for d in keys[k]["blobs"]}
    present = {"sha256:" + p.name for p in (cache / "blobs" / "sha256").iterdir()}
    assert gone and not gone & present and kept <= present
    fresh_build_is_cached(tmp_path, "fresh", context, spec)


def test_keep_storage_keeps_each_writers_newest_export(tmp_path: Path) -> None:
    """--keep-storage 0 drops every key but the newest export of each writer."""
    cache = tmp_path / "shared-cache"
    _between, keys, context = two_writers(tmp_path, f"type=local,dest={cache}")
    spec = f"type=local,src={cache}"
    cli = Stepbuild(tmp_path / "cli-store")
    assert all(line["newest"] for line in keys.values())  # one export per writer
    out = cli("cache", "prune", "--cache", spec, "--keep-storage", "0", "-f").stdout
    assert "removed 0 keys" in out
    assert cache_keys(cli, spec) == keys
    fresh_build_is_cached(tmp_path, "fresh", context, spec)


def test_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    cli = Stepbuild(tmp_path / "cli-store")
    for args, words in (
            (("--cache", "type=ftp,src=x"), ("unknown --cache type",)),
            (("--cache", f"type=local,src={tmp_path / 'none'}"), ("no team cache directory",)),
            (("--cache", f"type=local,src={tmp_path}", "--filter", "until=soon"),
             ("invalid --filter until='soon'",)),
            (("--cache", f"type=local,src={tmp_path}", "--keep-storage", "lots"),
             ("invalid --keep-storage",))):
        result = cli("cache", "prune", "-f", *args, check=False)
        assert result.returncode in (1, 2), result.stderr
        assert "Traceback" not in result.stderr
        for word in words:
            assert word in result.stderr, result.stderr


# --- the registry backend's races, with small synthetic records ---------------------------------


def test_a_writer_exporting_during_a_prune_loses_nothing(
        tmp_path: Path, plain_registry: registry_fixture.RunningRegistry) -> None:
    """A prune reads the cache; writer A exports again before the prune writes. A's new
    writer tag revision survives the fold (the prune deletes only the revision it read), so
    every key A just exported is still found, and every record's blob is still there."""
    from stepbuild.teamcache.prune import Policy, plan
    from stepbuild.teamcache.registry import RegistryCache, writer_id, writer_tag
    from stepbuild.teamcache.registry_prune import RegistryInventory
    from tests.integration.test_cache_registry import key, read_keys

    ref = f"{plain_registry.host}/race/cache:main"
    a, b = StampedWriter(tmp_path / "a", ref), StampedWriter(tmp_path / "b", ref)
    a.export([key("a-old")], used=1000.0)
    b.export([key("b-new")], used=3000.0)
    pruner = RegistryCache(ref, Connection(), tmp_path / "pruner", print)
    inventory = RegistryInventory(pruner)
    inventory.read()
    outcome = plan(inventory.entries(), Policy(until=2000.0))
    assert [e.name for e in outcome.drop] == [key("a-old")]
    a.export([key("a-during")], used=4000.0)  # between the prune's read and its fold
    # B's writer tag goes; A's export already replaced (and deleted) the revisions of A's tag
    # and of TAG the prune read: deleting them again finds nothing.
    assert inventory.fold(outcome) == 1
    assert set(_tags_of(plain_registry.host, "race/cache")) == {
        "main", writer_tag("main", writer_id(tmp_path / "a"))}
    found, warnings = read_keys(ref, tmp_path / "reader")
    assert {key("b-new"), key("a-during")} <= found and not warnings
    registry = Connection().open(plain_registry.host, "race/cache")
    reader = RegistryCache(ref, Connection(), tmp_path / "reader", print)
    for name in found:
        layer = reader.record(name)["layer"]
        assert registry.has_blob("race/cache", layer["digest"]) == layer["size"]
    reader.close()
    registry.close()
    pruner.close()


def test_an_export_deletes_the_revision_it_replaces(
        tmp_path: Path, plain_registry: registry_fixture.RunningRegistry) -> None:
    """Each write of a writer tag or TAG deletes the manifest it replaced, so that the
    registry's GC can free what only old revisions named."""
    from tests.integration.test_cache_registry import key

    ref = f"{plain_registry.host}/revisions/cache:main"
    writer = StampedWriter(tmp_path / "w", ref)
    writer.export([key("one")], used=1000.0)
    first = _tags_of(plain_registry.host, "revisions/cache")
    writer.export([key("two")], used=2000.0)
    second = _tags_of(plain_registry.host, "revisions/cache")
    assert set(first) == set(second) and len(first) == 2
    registry = Connection().open(plain_registry.host, "revisions/cache")
    for tag, digest in first.items():
        assert second[tag] != digest
        assert registry.head_manifest("revisions/cache", digest) is None, tag
    registry.close()


class StampedWriter:
    """test_cache_registry's Writer, its records stamped with `used` as a new export's are."""

    def __init__(self, root: Path, ref: str) -> None:
        from tests.integration.test_cache_registry import Writer

        self.writer = Writer(root, ref)

    def export(self, keys: list[str], used: float) -> None:
        from stepbuild.teamcache.records import stamp

        cache = self.writer.cache
        cache.prepare()
        for name in keys:
            cache.put_record(name, {**self.writer.pushed_record(name), "used": stamp(used)})
        cache.finish()


def _tags_of(host: str, repo: str) -> dict[str, str]:
    registry = Connection().open(host, repo)
    try:
        return {tag: head[0] for tag in registry.list_tags(repo)
                if (head := registry.head_manifest(repo, tag)) is not None}
    finally:
        registry.close()
