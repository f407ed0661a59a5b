"""Team cache hits fetch only the layers the build reads (teamcache.materialize).

The workload is the common multi-stage shape: a `builder` stage makes something big, the app
stage takes one small file from it with `COPY --from`. Builder A builds and exports every
stage (`mode=max`); builder B, with an empty store, gets every step CACHED and the same image
without ever downloading the builder stage's big layer. When B's build does need that layer (its
`COPY --from` misses) and the layer cannot be fetched, the key becomes a miss and the build
starts again: a bad cache still never fails a build.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from stepbuild.store.store import Store
from tests.integration import registry_fixture
from tests.integration.builds import (
    EPOCH,
    Stepbuild,
    build_app,
    store_with_base,
    write_context,
)

pytestmark = pytest.mark.root

plain_registry = registry_fixture.plain_registry

BUILDER = (
    "FROM base AS builder\n"
    "RUN head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /token"
    " && head -c 3000000 /dev/urandom > /big\n"
)
STEPFILE = BUILDER + (
    "FROM base\n"
    "COPY --from=builder /token /token\n"
    'CMD ["cat", "/token"]\n'
)
# The app stage with one more step before the COPY --from, whose key (parent state) then misses.
CHANGED_APP = BUILDER + (
    "FROM base\n"
    "RUN echo changed > /changed\n"
    "COPY --from=builder /token /token\n"
    'CMD ["cat", "/token"]\n'
)


def step_lines(stderr: str) -> list[str]:
    """CACHED or DONE for every step, in order, whatever its stage's label."""
    return [m.group(1) for m in re.finditer(r"^(?:\[[^]]*\] )?\s*(CACHED|DONE)\b", stderr,
                                            re.MULTILINE)]


def builder_layer(cache: Path) -> dict:
    """The cache dir's record of the builder stage's RUN (the big layer)."""
    for path in (cache / "keys").glob("*.json"):
        record = json.loads(path.read_bytes())
        if "/big" in record["created_by"]:
            return record
    raise AssertionError(f"no record of the builder's RUN in {cache}")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("team-cache-lazy")


@pytest.fixture(scope="module")
def exported(work: Path) -> tuple[Stepbuild, str, Path]:
    """Builder A built `app` from a context and exported every stage to work/cache-a."""
    sb = store_with_base(work, "a", *EPOCH)
    context = write_context(work / "ctx-a", STEPFILE)
    cache = work / "cache-a"
    digest, stderr = build_app(sb, context, "--cache-to", f"type=local,dest={cache},mode=max")
    assert step_lines(stderr) == ["DONE", "DONE"], stderr
    return sb, digest, cache


def check_store(sb: Stepbuild) -> None:
    result = sb("check")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("backend", ["local", "registry"])
def test_a_stage_read_only_through_a_cached_copy_from_is_never_fetched(
        work: Path, exported: tuple[Stepbuild, str, Path], backend: str,
        plain_registry: registry_fixture.RunningRegistry) -> None:
    a, digest_a, cache = exported
    source = f"type=local,src={cache}"
    if backend == "registry":
        ref = f"{plain_registry.host}/lazy/cache:app"
        build_app(a, work / "ctx-a", "--cache-to", f"type=registry,ref={ref},mode=max")
        source = f"type=registry,ref={ref}"
    big = builder_layer(cache)["diff_id"]
    b = store_with_base(work, f"b-{backend}", *EPOCH)
    context = write_context(work / f"ctx-b-{backend}" / "deeper", STEPFILE)
    digest_b, stderr = build_app(b, context, "--cache-from", source)
    assert step_lines(stderr) == ["CACHED", "CACHED"], stderr
    assert digest_b == digest_a and b.run("app") == a.run("app")
    store = Store(b.root)
    assert not store.has_layer(big) and not store.has_blob(big)
    assert not list((b.root / "blobs").rglob(builder_layer(cache)["layer"]["digest"][7:]))
    check_store(b)
    # the builder stage as the target needs its layer: now it is fetched, and still CACHED
    _, stderr = build_app(b, context, "--cache-from", source, "--target", "builder")
    assert step_lines(stderr) == ["CACHED"] and store.has_layer(big), stderr
    check_store(b)


def test_an_export_fetches_what_a_lazy_hit_left(work: Path,
                                                exported: tuple[Stepbuild, str, Path]) -> None:
    """B re-exports (mode=max) what it imported: the builder's layer is fetched for that."""
    a, _, cache = exported
    b = store_with_base(work, "b-export", *EPOCH)
    context = write_context(work / "ctx-b-export", STEPFILE)
    again = work / "cache-b"
    _, stderr = build_app(b, context, "--cache-from", f"type=local,src={cache}",
                      "--cache-to", f"type=local,dest={again},mode=max")
    assert step_lines(stderr) == ["CACHED", "CACHED"] and "warning" not in stderr, stderr
    record, original = builder_layer(again), builder_layer(cache)
    # the same record, stamped by B's export (its last use: `stepbuild cache prune`)
    assert {**record, "used": "", "writer": ""} == {**original, "used": "", "writer": ""}
    assert record["used"] > original["used"] and record["writer"] != original["writer"]
    blob = again / "blobs" / "sha256" / record["layer"]["digest"][7:]
    assert blob.stat().st_size == record["layer"]["size"]


def test_a_lazy_layer_that_cannot_be_fetched_is_a_miss_and_the_build_starts_again(
        work: Path, exported: tuple[Stepbuild, str, Path]) -> None:
    a, _, cache = exported
    bad = work / "cache-bad"
    shutil.copytree(cache, bad)
    record = builder_layer(bad)
    blob = bad / "blobs" / "sha256" / record["layer"]["digest"][7:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    b = store_with_base(work, "b-bad", *EPOCH)
    context = write_context(work / "ctx-b-bad", CHANGED_APP)
    result = b.build(context, "-t", "app", *EPOCH, "--cache-from", f"type=local,src={bad}")
    stderr = result.stderr
    assert "does not match its digest" in stderr and "building again" in stderr, stderr
    assert record["key"] in stderr
    # first attempt: the builder's RUN a lazy hit, the app's RUN ran, then its COPY --from
    # needed the bad layer; second: the builder's RUN ran, the app's RUN hit locally
    assert step_lines(stderr) == ["CACHED", "DONE", "DONE", "CACHED", "DONE"], stderr
    token = b.run("app")
    assert len(token) == 32 and token != a.run("app")  # made again, not the bad layer's
    check_store(b)
    assert not any(p.name.startswith(("cache-", "ingest-")) for p in (b.root / "tmp").iterdir())
