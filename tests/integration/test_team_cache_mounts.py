"""Cache mounts in the team cache: `--cache-to ...,cache-mounts=true` and `--cache-from`.

Builder A fills a `RUN --mount=type=cache` and exports it with its cache; builder B, an empty
store, imports the cache and a *different* RUN step (a miss on B: it runs) finds A's files in
its cache mount. The cache's contents never appear in an image layer; a local cache mount is
never overwritten by an imported one; a corrupt blob or record leaves the cache empty with a
warning. The registry backend does the same through a real docker-registry.
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepbuild.store.layout import cache_mount_name
from stepbuild.teamcache.cache import parse_cache_spec
from stepbuild.teamcache.records import MOUNT_SCHEMA, check_mount_record
from tests.integration import registry_fixture
from tests.integration.builds import (
    Stepbuild,
    step_lines,
    store_with_base,
    write_context,
)

pytestmark = pytest.mark.root

plain_registry = registry_fixture.plain_registry

FILL = ("FROM base\n"
        "RUN --mount=type=cache,target=/c sh -c 'echo from-a > /c/marker && mkdir -p /c/d"
        " && echo deep > /c/d/f && cat /c/marker'\n")
READ = ("FROM base\n"
        "RUN --mount=type=cache,target=/c sh -c 'echo reading; cat /c/marker /c/d/f"
        " || echo no-marker'\n")
MARKER_DIR = cache_mount_name({"id": "/c"})


def output(result: subprocess.CompletedProcess[str]) -> list[str]:
    """What the steps printed (the `| ` lines of the progress display)."""
    return [line.strip()[2:] for line in result.stderr.splitlines()
            if line.strip().startswith("| ")]


def members(sb: Stepbuild, image: str) -> list[str]:
    """The names of every entry in every layer of `image`."""
    names = []
    manifest = json.loads(sb("inspect", image).stdout)["manifest"]
    for layer in manifest["layers"]:
        with tarfile.open(sb.root / "blobs" / "sha256" / layer["digest"].split(":")[1]) as tar:
            names += tar.getnames()
    return names


@pytest.fixture(scope="module", autouse=True)
def collect_garbage() -> Iterator[None]:
    yield
    gc.collect()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("team-cache-mounts")


@pytest.fixture(scope="module")
def exported(work: Path) -> tuple[Stepbuild, Path]:
    """Builder A filled /c and exported it (and its steps) to work/cache-a."""
    a = store_with_base(work, "a")
    context = write_context(work / "ctx-a", FILL, {})
    cache = work / "cache-a"
    result = a.build(context, "-t", "filled", "--cache-to",
                     f"type=local,dest={cache},cache-mounts=true")
    assert output(result) == ["from-a"]  # the step's output shows it
    assert step_lines(result.stderr)[-1] == "DONE"
    return a, cache


def test_parse_cache_mounts_option() -> None:
    assert parse_cache_spec("type=local,dest=/x,cache-mounts=true", "to").cache_mounts
    assert not parse_cache_spec("type=local,dest=/x", "to").cache_mounts
    assert not parse_cache_spec("type=local,dest=/x,cache-mounts=false", "to").cache_mounts
    with pytest.raises(Exception, match="cache-mounts"):
        parse_cache_spec("type=local,dest=/x,cache-mounts=maybe", "to")


def test_export_writes_a_record_and_a_deterministic_blob(
        work: Path, exported: tuple[Stepbuild, Path]) -> None:
    a, cache = exported
    path = cache / "cache-mounts" / f"{MARKER_DIR}.json"
    record = check_mount_record(MARKER_DIR, json.loads(path.read_bytes()))
    assert record["schema"] == MOUNT_SCHEMA and record["id"] == "/c"
    blob = (cache / "blobs" / "sha256" / record["digest"].split(":")[1]).read_bytes()
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == record["digest"]
    assert len(blob) == record["size"]
    with tarfile.open(fileobj=__import__("io").BytesIO(gzip.decompress(blob))) as tar:
        assert sorted(tar.getnames()) == ["d", "d/f", "marker"]
    # the contents are in no image layer
    assert not any(n.lstrip("./").startswith(("c/marker", "c/d")) for n in members(a, "filled"))
    # a step that only reads the cache, run twice: the same blob (deterministic tar, gzip)
    reader = write_context(work / "ctx-a-reader", READ, {})
    digests = []
    for n in (1, 2):
        again = work / f"cache-a-again-{n}"
        a.build(reader, "--no-cache", "--cache-to", f"type=local,dest={again},cache-mounts=true")
        digests.append(json.loads((again / "cache-mounts" / f"{MARKER_DIR}.json")
                                  .read_bytes())["digest"])
    assert digests == [record["digest"]] * 2
    # without cache-mounts=true nothing of the mount is exported
    plain = work / "cache-a-plain"
    a.build(work / "ctx-a", "--cache-to", f"type=local,dest={plain}")
    assert not list((plain / "cache-mounts").glob("*.json"))


def test_colleague_gets_the_cache_mount(work: Path, exported: tuple[Stepbuild, Path]) -> None:
    _, cache = exported
    b = store_with_base(work, "b")
    assert not (b.root / "cache-mounts" / MARKER_DIR).exists()
    context = write_context(work / "ctx-b", READ, {})
    result = b.build(context, "-t", "reader", "--cache-from", f"type=local,src={cache}")
    assert step_lines(result.stderr)[-1] == "DONE"  # a different step: it ran on B
    assert output(result) == ["reading", "from-a", "deep"], result.stderr
    assert (b.root / "cache-mounts" / MARKER_DIR / "data" / "marker").read_text() == "from-a\n"
    assert not any("marker" in n for n in members(b, "reader"))
    assert not list((b.root / "tmp").glob("new-*"))


def test_a_local_cache_mount_is_never_overwritten(work: Path,
                                                  exported: tuple[Stepbuild, Path]) -> None:
    _, cache = exported
    c = store_with_base(work, "c")
    own = write_context(work / "ctx-c-own",
                        "FROM base\nRUN --mount=type=cache,target=/c sh -c 'echo mine >"
                        " /c/marker'\n", {})
    c.build(own)
    context = write_context(work / "ctx-c", READ, {})
    result = c.build(context, "--cache-from", f"type=local,src={cache}")
    assert output(result)[:2] == ["reading", "mine"], result.stderr


def test_corrupt_blob_gives_an_empty_cache_and_a_warning(
        work: Path, exported: tuple[Stepbuild, Path]) -> None:
    import shutil

    _, cache = exported
    broken = work / "cache-broken"
    shutil.copytree(cache, broken)
    record = json.loads((broken / "cache-mounts" / f"{MARKER_DIR}.json").read_bytes())
    blob = broken / "blobs" / "sha256" / record["digest"].split(":")[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    d = store_with_base(work, "d")
    context = write_context(work / "ctx-d", READ, {})
    result = d.build(context, "--cache-from", f"type=local,src={broken}")
    assert output(result)[0] == "reading" and output(result)[-1] == "no-marker", result.stderr
    assert "from-a" not in output(result)
    assert "does not match its digest" in result.stderr and "starting it empty" in result.stderr
    assert (d.root / "cache-mounts" / MARKER_DIR / "data").is_dir()
    assert not list((d.root / "cache-mounts" / MARKER_DIR / "data").iterdir())


def test_corrupt_record_gives_an_empty_cache_and_a_warning(
        work: Path, exported: tuple[Stepbuild, Path]) -> None:
    import shutil

    _, cache = exported
    broken = work / "cache-broken-record"
    shutil.copytree(cache, broken)
    path = broken / "cache-mounts" / f"{MARKER_DIR}.json"
    record = json.loads(path.read_bytes())
    path.write_text(json.dumps({**record, "identity": {"id": "/c", "uid": 5}}))
    e = store_with_base(work, "e")
    result = e.build(write_context(work / "ctx-e", READ, {}),
                     "--cache-from", f"type=local,src={broken}")
    assert output(result)[-1] == "no-marker" and "for another cache" in result.stderr


def test_registry_cache_mounts(work: Path, plain_registry: registry_fixture.RunningRegistry,
                               exported: tuple[Stepbuild, Path]) -> None:
    a, _ = exported
    ref = f"{plain_registry.host}/team/mounts:1"
    pushed = a.build(work / "ctx-a", "--cache-to",
                     f"type=registry,ref={ref},cache-mounts=true")
    assert step_lines(pushed.stderr)[-1] == "CACHED"  # a hit still exports the mount it declares
    f = store_with_base(work, "f")
    result = f.build(write_context(work / "ctx-f", READ, {}),
                     "--cache-from", f"type=registry,ref={ref}")
    assert step_lines(result.stderr)[-1] == "DONE"
    assert output(result) == ["reading", "from-a", "deep"], result.stderr
