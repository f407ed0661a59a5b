"""The team cache (--cache-to / --cache-from), for real: two stores, two context paths.

Builder A builds and exports; builder B — an empty store (plus the same busybox `base`), the
context copied elsewhere — imports: every step is CACHED, B's image carries A's random token
(the expensive step did not run again) and has A's digest. A corrupt record or blob in the
cache degrades to a miss with a warning, and so does a record that is a FIFO (never a hang).
Four builders exporting into one directory at once all succeed and leave every entry readable.
The registry backend does the same through a real docker-registry.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from stepbuild.teamcache.records import RECORD_SCHEMA, check_record
from tests.fifos import release
from tests.integration import registry_fixture
from tests.integration.builds import (
    EPOCH,
    Stepbuild,
    build_app,
    step_lines,
    store_with_base,
    write_context,
)

pytestmark = pytest.mark.root

plain_registry = registry_fixture.plain_registry

STEPFILE = (
    "FROM base\n"
    "RUN sleep 1 && head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /token\n"
    "COPY data.txt /data.txt\n"
    "RUN cat /token /data.txt > /both && rm /etc/group\n"
    'CMD ["cat", "/both"]\n'
)


def keys_of(sb: Stepbuild) -> set[str]:
    return {p.stem for p in (sb.root / "cache").glob("*.json")}


def read_all(cache: Path) -> list[dict]:
    """Every record of a local cache dir, checked, with its blob present and intact."""
    import hashlib

    records = []
    for path in sorted((cache / "keys").glob("*.json")):
        record = check_record(path.stem, json.loads(path.read_bytes()))
        layer = record["layer"]
        if layer is not None:
            data = (cache / "blobs" / "sha256" / layer["digest"].split(":")[1]).read_bytes()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
            assert len(data) == layer["size"]
        records.append(record)
    return records


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("team-cache")


@pytest.fixture(scope="module")
def exported(work: Path) -> tuple[Stepbuild, Path, Path, str]:
    """Builder A: built `app` and exported its cache to work/cache-a."""
    sb = store_with_base(work, "a", *EPOCH)
    context = write_context(work / "ctx-a", STEPFILE, {"data.txt": "hello\n"})
    cache = work / "cache-a"
    digest, stderr = build_app(sb, context, "--cache-to", f"type=local,dest={cache}")
    assert step_lines(stderr)[-3:] == ["DONE", "DONE", "DONE"]
    return sb, context, cache, digest


def fresh_b(work: Path, name: str, source: Path) -> tuple[Stepbuild, Path]:
    """Builder B: an empty store with `base`, and A's context copied to another path."""
    sb = store_with_base(work, name, *EPOCH)
    context = work / f"ctx-{name}" / "deeper"
    shutil.copytree(source, context)
    return sb, context


def test_keys_are_machine_independent(work: Path) -> None:
    """Same Stepfile and context at another path (other mtimes), another store: same keys.

    (COPY keeps mtimes in its layer, as docker does; SOURCE_DATE_EPOCH clamps them, so a
    checkout made later elsewhere gives the same layer, hence the same later keys too.)
    """
    import os
    import time

    stepfile = ("FROM base\nARG V=1\nENV E=$V\nRUN echo $E > /e\nCOPY . /src/\n"
                "WORKDIR /src\nRUN ls -R > /listing\n")
    context_a = write_context(work / "keys-ctx-a", stepfile,
                              {"data.txt": "hello\n", "sub/more.txt": "more\n"})
    context_b = work / "keys-ctx-b" / "elsewhere"
    shutil.copytree(context_a, context_b)
    for path in context_b.rglob("*"):
        os.utime(path, (time.time() + 50, time.time() + 50))
    a, b = store_with_base(work, "keys-a", *EPOCH), store_with_base(work, "keys-b", *EPOCH)
    digest_a, _ = build_app(a, context_a)
    digest_b, _ = build_app(b, context_b)
    assert keys_of(a) == keys_of(b) and len(keys_of(a)) >= 3  # base ADD + RUN, COPY, RUN
    assert digest_a == digest_b


def test_colleague_reuses_the_cache(work: Path,
                                    exported: tuple[Stepbuild, Path, Path, str]) -> None:
    a, context_a, cache, digest_a = exported
    records = read_all(cache)
    assert len(records) == 3 and all(r["schema"] == RECORD_SCHEMA for r in records)
    assert (cache / "oci-layout").is_file()
    b, context_b = fresh_b(work, "b", context_a)
    assert keys_of(a) - keys_of(b)  # B lacks A's app steps before the build
    digest_b, stderr = build_app(b, context_b, "--cache-from", f"type=local,src={cache}")
    assert step_lines(stderr) [-3:] == ["CACHED", "CACHED", "CACHED"], stderr
    assert "DONE" not in " ".join(step_lines(stderr)[1:])
    assert digest_b == digest_a
    assert b.run("app") == a.run("app")  # A's token: the sleep step never ran on B
    # B's own store now has the steps: a rebuild without --cache-from hits locally
    again, stderr = build_app(b, context_b)
    assert again == digest_a and step_lines(stderr)[-3:] == ["CACHED"] * 3


def test_mode_min_and_max(work: Path) -> None:
    sb = store_with_base(work, "modes", *EPOCH)
    context = write_context(work / "ctx-modes", "FROM base AS tools\nRUN echo t > /t\n"
                                                "FROM base\nCOPY --from=tools /t /t\nRUN cat /t\n")
    build_app(sb, context, "--cache-to", f"type=local,dest={work / 'min'}",
          "--cache-to", f"type=local,dest={work / 'max'},mode=max")
    made_by = lambda d: sorted(r["created_by"] for r in read_all(work / d))  # noqa: E731
    assert len(made_by("min")) == 2 and not any("echo t" in c for c in made_by("min"))
    assert len(made_by("max")) == 3 and any("echo t" in c for c in made_by("max"))


def _copy_cache(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def test_corrupt_record_is_a_miss(work: Path,
                                  exported: tuple[Stepbuild, Path, Path, str]) -> None:
    a, context_a, cache, digest_a = exported
    bad = _copy_cache(cache, work / "bad-record")
    token_key = next(r["key"] for r in read_all(cache) if "sleep 1" in r["created_by"])
    (bad / "keys" / f"{token_key}.json").write_text('{"schema": "stepbuild-cache/1", "ke')
    b, context_b = fresh_b(work, "b-record", context_a)
    digest_b, stderr = build_app(b, context_b, "--cache-from", f"type=local,src={bad}")
    assert "warning:" in stderr and token_key in stderr and "treated as a miss" in stderr
    assert step_lines(stderr)[-3] == "DONE"  # the token step ran again
    assert b.run("app") != a.run("app")


def test_corrupt_blob_is_a_miss(work: Path,
                                exported: tuple[Stepbuild, Path, Path, str]) -> None:
    a, context_a, cache, digest_a = exported
    bad = _copy_cache(cache, work / "bad-blob")
    record = next(r for r in read_all(cache) if "sleep 1" in r["created_by"])
    blob = bad / "blobs" / "sha256" / record["layer"]["digest"].split(":")[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    b, context_b = fresh_b(work, "b-blob", context_a)
    digest_b, stderr = build_app(b, context_b, "--cache-from", f"type=local,src={bad}")
    assert "warning:" in stderr and "does not match its digest" in stderr
    assert step_lines(stderr)[-3] == "DONE"
    assert b.run("app") != a.run("app")  # the wrong layer was not used
    assert not any(p.name.startswith(("cache-", "ingest-")) for p in (b.root / "tmp").iterdir())


def test_a_fifo_record_is_a_miss_not_a_hang(work: Path,
                                           exported: tuple[Stepbuild, Path, Path, str]) -> None:
    """A teammate replaced a record of the shared dir with a FIFO: opening it for reading
    would wait forever for a writer. The build must warn, run the step and finish (the
    Stepbuild call's timeout fails the test if it hangs)."""
    import os

    a, context_a, cache, _ = exported
    bad = _copy_cache(cache, work / "bad-fifo")
    token_key = next(r["key"] for r in read_all(cache) if "sleep 1" in r["created_by"])
    record = bad / "keys" / f"{token_key}.json"
    record.unlink()
    os.mkfifo(record)
    b, context_b = fresh_b(work, "b-fifo", context_a)
    try:
        _, stderr = build_app(b, context_b, "--cache-from", f"type=local,src={bad}")
    finally:
        release(record)  # a hung reader (a regression) is let go
    assert "warning:" in stderr and "not a regular file" in stderr, stderr
    assert step_lines(stderr)[-3] == "DONE"  # the token step ran again
    assert b.run("app") != a.run("app")


def test_a_record_for_a_wrong_layer_is_a_miss(work: Path,
                                              exported: tuple[Stepbuild, Path, Path, str]
                                              ) -> None:
    """A well-formed record whose blob is another layer: refused by diff_id, not used."""
    a, context_a, cache, _ = exported
    bad = _copy_cache(cache, work / "bad-swap")
    records = read_all(cache)
    token = next(r for r in records if "sleep 1" in r["created_by"])
    other = next(r for r in records if r["layer"] and r is not token)
    token["layer"] = other["layer"]
    (bad / "keys" / f"{token['key']}.json").write_text(json.dumps(token))
    b, context_b = fresh_b(work, "b-swap", context_a)
    _, stderr = build_app(b, context_b, "--cache-from", f"type=local,src={bad}")
    assert "is not layer" in stderr and step_lines(stderr)[-3] == "DONE"


def test_four_builders_share_one_cache_dir(work: Path) -> None:
    cache = work / "shared"
    store_with_base(work, "base-only", *EPOCH)  # the keys of `base` alone
    stores = [store_with_base(work, f"w{i}", *EPOCH) for i in range(4)]
    # two Stepfiles, each built by two builders (who race on the same keys)
    contexts = [write_context(work / f"ctx-w{i}",
                              STEPFILE.replace("FROM base\n", f"FROM base\nENV V={i % 2}\n"),
                              {"data.txt": f"data {i % 2}\n"}) for i in range(4)]
    results: list[str | BaseException] = [""] * 4

    def one(i: int) -> None:
        try:
            results[i], _ = build_app(stores[i], contexts[i], "--cache-to",
                                  f"type=local,dest={cache}", "--cache-from",
                                  f"type=local,src={cache}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not [r for r in results if isinstance(r, BaseException)], results
    records = read_all(cache)  # every record parses, is for its key, its blob is intact
    keys = {r["key"] for r in records}
    base_keys = keys_of(Stepbuild(work / "base-only"))
    for sb in stores:  # every app step of every builder is in the shared cache
        assert keys_of(sb) - base_keys <= keys
    assert len(records) >= 2 * 3  # two variants of 3 steps (more when tokens raced)
    assert not list((cache / "tmp").iterdir())
    # and a fifth, empty builder hits everything from it
    late, context = fresh_b(work, "late", contexts[3])
    digest, stderr = build_app(late, context, "--cache-from", f"type=local,src={cache}")
    assert step_lines(stderr)[-3:] == ["CACHED"] * 3
    assert digest in results


def test_bad_cache_options_are_usage_errors(work: Path) -> None:
    sb = Stepbuild(work / "usage")
    context = write_context(work / "ctx-usage", "FROM scratch\n")
    for option, value in (("--cache-to", "type=local"), ("--cache-from", "type=nfs,src=/x"),
                          ("--cache-to", "type=local,dest=/x,mode=all"),
                          ("--cache-from", "type=registry")):
        result = sb.build(context, option, value, check=False)
        assert result.returncode == 2, (value, result.stderr)


def test_registry_cache(work: Path, plain_registry: registry_fixture.RunningRegistry,
                        exported: tuple[Stepbuild, Path, Path, str]) -> None:
    a, context_a, _, digest_a = exported
    ref = f"{plain_registry.host}/team/cache:app"
    _, stderr = build_app(a, context_a, "--cache-to", f"type=registry,ref={ref},mode=max")
    b, context_b = fresh_b(work, "b-registry", context_a)
    digest_b, stderr = build_app(b, context_b, "--cache-from", f"type=registry,ref={ref}")
    assert step_lines(stderr)[-3:] == ["CACHED"] * 3, stderr
    assert digest_b == digest_a and b.run("app") == a.run("app")
    # B pushes its image beside the cache: the imported layers are mounted, not re-uploaded
    pushed = b("push", "app", f"{plain_registry.host}/team/app:1")
    assert pushed.stderr.count("mounted from team/cache") == 3, pushed.stderr
    # an unknown tag is an empty cache; a tag that is not a cache is a warning, not a failure
    c, context_c = fresh_b(work, "c-registry", context_a)
    _, stderr = build_app(c, context_c, "--cache-from",
                      f"type=registry,ref={plain_registry.host}/team/cache:nothing")
    assert step_lines(stderr)[-3:] == ["DONE"] * 3 and "warning" not in stderr


def test_registry_image_is_not_a_cache(work: Path,
                                       plain_registry: registry_fixture.RunningRegistry,
                                       exported: tuple[Stepbuild, Path, Path, str]) -> None:
    a, context_a, _, _ = exported
    a("push", "app", f"{plain_registry.host}/team/image:1")
    d, context_d = fresh_b(work, "d-registry", context_a)
    _, stderr = build_app(d, context_d, "--cache-from",
                      f"type=registry,ref={plain_registry.host}/team/image:1")
    assert "not a stepbuild cache" in stderr and "treated as a miss" in stderr
    assert stderr.count("not a stepbuild cache") == 1  # once per build, not per step
    assert step_lines(stderr)[-3:] == ["DONE"] * 3


def test_unwritable_cache_destination_is_a_clear_error(
        work: Path, exported: tuple[Stepbuild, Path, Path, str]) -> None:
    a, context_a, _, _ = exported
    not_a_dir = work / "a-file"
    not_a_dir.write_text("x")
    result = a.build(context_a, *EPOCH, "--cache-to", f"type=local,dest={not_a_dir}",
                     check=False)
    assert result.returncode == 1 and "cannot export the cache" in result.stderr
    assert "Traceback" not in result.stderr


def registry_records(ref: str, work: Path) -> dict[str, dict]:
    """Every record a fresh reader finds under `ref`, each checked and its blob fetched: the
    blob matches its digest and decompresses to the record's diff_id."""
    import gzip
    import hashlib

    from stepbuild.distribution.connection import Connection
    from stepbuild.teamcache.registry import RegistryCache

    warnings: list[str] = []
    work.mkdir(exist_ok=True)
    reader = RegistryCache(ref, Connection(), work, warnings.append)
    records = {}
    for key in reader._load():
        record = reader.record(key)
        assert record is not None
        if record["layer"] is not None:
            blob = work / "fetched"
            reader.fetch_blob(record["layer"], blob)  # verifies the digest
            tar = gzip.decompress(blob.read_bytes())
            assert "sha256:" + hashlib.sha256(tar).hexdigest() == record["diff_id"]
        records[key] = record
    assert warnings == []
    return records


def test_four_builders_at_once_share_a_registry_cache_and_a_cache_dir(
        work: Path, plain_registry: registry_fixture.RunningRegistry) -> None:
    # Four builds at once export to ONE registry tag and ONE directory and import from both:
    # two build the same Stepfile (racing on the same keys), two others build different ones
    # on one store. A registry has no compare-and-set on tags, so every store writes its own
    # writer tag (cache_registry.py); no key may be lost, whatever the timing.
    ref = f"{plain_registry.host}/team/shared:main"
    cache = work / "shared-both"
    base_keys = keys_of(store_with_base(work, "both-base-only", *EPOCH))
    stores = [store_with_base(work, f"both{i}", *EPOCH) for i in range(3)]
    jobs = [(stores[0], 0), (stores[1], 0), (stores[2], 1), (stores[2], 2)]
    contexts = [write_context(work / f"ctx-both{v}",
                              STEPFILE.replace("FROM base\n", f"FROM base\nENV BOTH={v}\n"),
                              {"data.txt": f"both {v}\n"}) for v in range(3)]
    results: list[str | BaseException] = [""] * len(jobs)

    def one(i: int) -> None:
        sb, variant = jobs[i]
        try:
            results[i], _ = build_app(sb, contexts[variant],
                                  "--cache-to", f"type=registry,ref={ref},mode=max",
                                  "--cache-to", f"type=local,dest={cache},mode=max",
                                  "--cache-from", f"type=registry,ref={ref}",
                                  "--cache-from", f"type=local,src={cache}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not [r for r in results if isinstance(r, BaseException)], results
    in_registry = registry_records(ref, work / "reader")
    in_dir = {r["key"]: r for r in read_all(cache)}
    for sb in stores:  # every step any builder ran or hit is in both caches
        assert keys_of(sb) - base_keys <= set(in_registry)
        assert keys_of(sb) - base_keys <= set(in_dir)
    # a fresh builder of each Stepfile hits every step from either cache alone
    for variant in range(3):
        digests = {r for r, (_, v) in zip(results, jobs, strict=True) if v == variant}
        for source in (f"type=registry,ref={ref}", f"type=local,src={cache}"):
            late, context = fresh_b(work, f"late-both{variant}-{source[5:10]}",
                                    contexts[variant])
            digest, stderr = build_app(late, context, "--cache-from", source)
            assert step_lines(stderr)[-3:] == ["CACHED"] * 3, (source, stderr)
            assert digest in digests
