"""The Store contract, as a suite any store implementation must pass (containerd/umoci style).

Each check is a function `check(make_store, root)`: `make_store(root)` opens a store rooted
at `root` (a fresh, empty, real directory; checks that need a second process call it again
in the child, so it must work after fork). Run them all with `run_contract`, or let pytest
parametrise over `CHECKS` (tests/unit/store/test_store.py does) to see each by name.

Families: idempotent put, verified read, layer commit (and its races), atomic index under
concurrent writers, cache records (corrupt ones are misses), prune (keeps what is reachable,
drops the rest, never anything young), check (finds each kind of damage), and crash safety
(a process killed at every filesystem step leaves a store that `check()` finds clean and
that the next operation uses as if nothing happened).

Concurrency checks fork real processes on a real filesystem: flock is a no-op under pyfakefs.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from stepbuild.errors import (
    BlobNotFound,
    DigestMismatch,
    InvalidDigest,
    InvalidDocument,
    StoreError,
)
from stepbuild.oci.digest import sha256_bytes
from stepbuild.oci.documents import (
    MEDIA_TYPE_LAYER,
    ContainerConfig,
    Descriptor,
    ImageConfig,
    Index,
)
from stepbuild.store.gc import PruneStats, check, prune
from stepbuild.store.records import CacheRecord
from stepbuild.store.store import Store

MakeStore = Callable[[Path], Store]
Check = Callable[[MakeStore, Path], None]
CHECKS: list[Check] = []

KEY = "0123456789abcdef0123456789abcdef"
CREATED = "2026-01-02T03:04:05Z"
OTHER_KEY = "fedcba9876543210fedcba9876543210"
_FORK = multiprocessing.get_context("fork")


def contract(check: Check) -> Check:
    CHECKS.append(check)
    return check


def run_contract(make_store: MakeStore, base: Path) -> None:
    """Run every check, each on a fresh directory under `base`."""
    for each in CHECKS:
        each(make_store, base / each.__name__)


def checks_named(*prefixes: str) -> list[Check]:
    """The checks of some families, by their names' prefix ("cache_record", "prune")."""
    return [c for c in CHECKS if c.__name__.startswith(prefixes)]


# --- helpers --------------------------------------------------------------------------------


def make_layer(store: Store, content: bytes) -> tuple[Path, str, Path]:
    """A captured layer as the builder hands it over: (upper dir, diff_id, tar file).

    The tar bytes are a stand-in (the store never parses them); the diff_id is their sha256.
    """
    upper = store.tmp_dir("upper-")
    (upper / "file").write_bytes(content)
    tar = store.tmp_file("layer-")
    tar.write_bytes(b"tar:" + content)
    return upper, sha256_bytes(b"tar:" + content), tar


def cache_record(*diff_ids: str, blobs: tuple[str, ...] = ()) -> CacheRecord:
    """A cache record of `diff_ids` (none: a step that added no layer)."""
    return CacheRecord(diff_ids, CREATED, "RUN true", blobs)


def commit(store: Store, content: bytes) -> str:
    upper, diff_id, tar = make_layer(store, content)
    store.commit_layer(upper, diff_id, tar)
    return diff_id


def build_image(store: Store, content: bytes = b"base", cmd: str = "true") -> Descriptor:
    """Commit one layer and write an (untagged) image on it."""
    diff_id = commit(store, content)
    config = ImageConfig("amd64", "linux", ContainerConfig(cmd=(cmd,)), diff_ids=(diff_id,))
    return store.put_image(config, [store.descriptor(diff_id, MEDIA_TYPE_LAYER)])


def run_processes(*targets: Callable[[], None]) -> None:
    """Run each target in its own forked process, all at once; each must exit 0."""
    procs = [_FORK.Process(target=t) for t in targets]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * len(procs)


def tmp_entries(store: Store) -> list[str]:
    return sorted(os.listdir(store.root / "tmp"))


def age(path: Path, seconds: float) -> None:
    """Make `path` look `seconds` old."""
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def blob_file(store: Store, digest: str) -> Path:
    return store.root / "blobs" / "sha256" / digest.split(":", 1)[1]


def damage(path: Path, data: bytes = b"X") -> None:
    """Overwrite the start of a read-only file (bit rot, a careless tool)."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(data)


# --- blobs ----------------------------------------------------------------------------------


@contract
def put_blob_is_idempotent(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    first = store.put_blob(b"hello")
    assert first == (sha256_bytes(b"hello"), 5)
    assert store.put_blob(b"hello") == first
    assert store.read_blob(first[0]) == b"hello"
    assert store.has_blob(first[0])
    assert store.blob_path(first[0]).read_bytes() == b"hello"
    assert len(os.listdir(root / "blobs" / "sha256")) == 1
    assert tmp_entries(store) == []
    assert store.put_blob(b"") == (sha256_bytes(b""), 0)


@contract
def read_blob_verifies(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    digest, _ = store.put_blob(b"hello")
    damage(blob_file(store, digest))
    with pytest.raises(DigestMismatch) as err:
        store.read_blob(digest)
    assert err.value.expected == digest
    assert err.value.actual == sha256_bytes(b"Xello")
    missing = sha256_bytes(b"missing")
    with pytest.raises(BlobNotFound) as not_found:
        store.read_blob(missing)
    assert not_found.value.digest == missing
    with pytest.raises(BlobNotFound):
        store.blob_path(missing)
    assert not store.has_blob(missing)


@contract
def digests_are_validated_before_use(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    bad = [
        "sha256:../../../etc/passwd",
        "sha256:" + "A" * 64,
        "sha512:" + "a" * 128,
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 64 + "\n",
        "a" * 64,
        "",
    ]
    for digest in bad:
        with pytest.raises(InvalidDigest):
            store.read_blob(digest)
        with pytest.raises(InvalidDigest):
            store.has_blob(digest)
        with pytest.raises(InvalidDigest):
            store.layer_dir(digest)


@contract
def ingest_blob_hashes_verifies_and_consumes(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    tmp = store.tmp_file("in-")
    tmp.write_bytes(b"content")
    assert store.ingest_blob(tmp) == (sha256_bytes(b"content"), 7)
    assert not tmp.exists()

    again = store.tmp_file("in-")
    again.write_bytes(b"content")
    assert store.ingest_blob(again, sha256_bytes(b"content"))[0] == sha256_bytes(b"content")
    assert not again.exists()

    wrong = store.tmp_file("in-")
    wrong.write_bytes(b"evil")
    with pytest.raises(DigestMismatch):
        store.ingest_blob(wrong, sha256_bytes(b"good"))
    assert not wrong.exists()
    assert not store.has_blob(sha256_bytes(b"good"))
    assert not store.has_blob(sha256_bytes(b"evil"))
    assert tmp_entries(store) == []


@contract
def ingest_blob_copies_files_outside_tmp(make_store: MakeStore, root: Path) -> None:
    store = make_store(root / "store")
    outside = root / "outside.tar"
    outside.write_bytes(b"mine")
    digest, size = store.ingest_blob(outside)
    assert (digest, size) == (sha256_bytes(b"mine"), 4)
    assert outside.read_bytes() == b"mine"
    assert store.read_blob(digest) == b"mine"


@contract
def damaged_blob_of_wrong_size_is_replaced_on_put(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    digest, _ = store.put_blob(b"hello")
    path = blob_file(store, digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"hel")  # torn
    store.put_blob(b"hello")
    assert store.read_blob(digest) == b"hello"


# --- layers ---------------------------------------------------------------------------------


@contract
def commit_layer_moves_dir_after_blob(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    upper, diff_id, tar = make_layer(store, b"one")
    assert not store.has_layer(diff_id)
    path = store.commit_layer(upper, diff_id, tar)
    assert path == store.layer_dir(diff_id)
    assert (path / "file").read_bytes() == b"one"
    assert store.has_layer(diff_id) and store.has_blob(diff_id)
    assert store.read_blob(diff_id) == b"tar:one"
    assert not upper.exists() and not tar.exists()
    assert tmp_entries(store) == []
    assert check(store) == []


@contract
def commit_layer_twice_keeps_the_first(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    first = commit(store, b"one")
    upper, diff_id, tar = make_layer(store, b"one")
    (upper / "extra").write_text("ours")
    assert store.commit_layer(upper, diff_id, tar) == store.layer_dir(first)
    assert not (store.layer_dir(first) / "extra").exists()
    assert tmp_entries(store) == []
    assert os.listdir(root / "layers") == [first.split(":")[1]]


@contract
def commit_layer_refuses_a_wrong_diff_id(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    upper, _, tar = make_layer(store, b"one")
    claimed = sha256_bytes(b"something else")
    with pytest.raises(DigestMismatch):
        store.commit_layer(upper, claimed, tar)
    assert not store.has_layer(claimed)
    assert os.listdir(root / "layers") == []
    assert check(store) == []


@contract
def commit_layer_race_makes_one_dir(make_store: MakeStore, root: Path) -> None:
    make_store(root)

    def committer(tag: str) -> Callable[[], None]:
        def run() -> None:
            store = make_store(root)
            for i in range(10):
                upper, diff_id, tar = make_layer(store, b"layer %d" % i)
                (upper / "who").write_text(tag)
                path = store.commit_layer(upper, diff_id, tar)
                assert (path / "file").read_bytes() == b"layer %d" % i

        return run

    run_processes(committer("a"), committer("b"))
    store = make_store(root)
    assert len(os.listdir(root / "layers")) == 10
    for i in range(10):
        diff_id = sha256_bytes(b"tar:layer %d" % i)
        assert store.has_layer(diff_id)
        assert (store.layer_dir(diff_id) / "who").read_text() in ("a", "b")
    assert tmp_entries(store) == []
    assert check(store) == []


# --- images and tags ------------------------------------------------------------------------


@contract
def tag_resolve_untag(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    one, two = build_image(store, b"one"), build_image(store, b"two")
    store.tag("app:1.0", one)
    store.tag("app:2.0", two)
    assert store.resolve("app:1.0") == one
    assert [name for name, _ in store.images()] == ["app:1.0", "app:2.0"]
    store.tag("app:1.0", two)  # re-tag replaces, in place
    assert store.resolve("app:1.0") == two
    assert len(store.images()) == 2
    assert store.resolve(one.digest) == one  # untagged, by digest: from its blob
    assert store.resolve(two.digest) == two
    assert store.resolve(two.digest.split(":")[1][:12]) == two
    assert store.resolve("nothing:here") is None
    assert store.resolve("sha256:" + "0" * 64) is None
    assert store.untag("app:1.0") is True
    assert store.untag("app:1.0") is False
    assert store.resolve("app:1.0") is None
    assert store.manifest(two).layers[0].digest == store.config(store.manifest(two)).diff_ids[0]
    assert store.config(store.manifest(two)).config.cmd == ("true",)


@contract
def put_image_is_idempotent(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    assert build_image(store, b"one") == build_image(store, b"one")


@contract
def put_image_and_tag_refuse_missing_content(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    missing = sha256_bytes(b"never committed")
    config = ImageConfig("amd64", "linux", diff_ids=(missing,))
    with pytest.raises(BlobNotFound):
        store.put_image(config, [Descriptor(MEDIA_TYPE_LAYER, missing, 15)])
    with pytest.raises(InvalidDocument):
        store.put_image(ImageConfig("amd64", "linux"), [])
    diff_id = commit(store, b"one")
    with pytest.raises(DigestMismatch):
        store.put_image(
            ImageConfig("amd64", "linux", diff_ids=(diff_id,)),
            [Descriptor(MEDIA_TYPE_LAYER, diff_id, 999)],
        )
    with pytest.raises(BlobNotFound):
        store.tag("app:1", Descriptor("application/vnd.oci.image.manifest.v1+json", missing, 1))
    for bad in ("", "app 1", "/app", "app/", "a..b", "über"):
        with pytest.raises(StoreError):
            store.tag(bad, build_image(store))
    assert store.images() == []


@contract
def digest_prefixes_resolve_only_when_unique(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    image = build_image(store)
    store.tag("app:1", image)
    store.tag("app:2", image)  # two refs, one digest: still one match
    hex_digest = image.digest.split(":")[1]
    assert store.resolve(hex_digest[:12]) == image
    assert store.resolve(hex_digest[:11]) is None  # too short to be a prefix
    # Two digests sharing 12 digits cannot be made on purpose; forge index.json instead.
    twins = [
        Descriptor(
            image.media_type,
            "sha256:" + "ab" * 6 + c * 52,
            1,
            {"org.opencontainers.image.ref.name": f"twin:{c}"},
        )
        for c in "01"
    ]
    (root / "index.json").write_bytes(Index(tuple(twins)).to_bytes())
    with pytest.raises(StoreError):
        store.resolve("ab" * 6)
    assert store.resolve("ab" * 6 + "0") == replace(twins[0], annotations=None)


@contract
def concurrent_taggers_lose_nothing(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    image = build_image(store)

    def tagger(prefix: str) -> Callable[[], None]:
        def run() -> None:
            mine = make_store(root)
            for i in range(50):
                mine.tag(f"{prefix}:{i}", image)

        return run

    run_processes(tagger("a"), tagger("b"))
    names = {name for name, _ in store.images()}
    assert names == {f"{p}:{i}" for p in "ab" for i in range(50)}
    assert check(store) == []


@contract
def concurrent_opens_create_one_layout(make_store: MakeStore, root: Path) -> None:
    def opener() -> None:
        make_store(root).tag("app:1", build_image(make_store(root)))

    run_processes(opener, opener, opener)
    store = make_store(root)
    assert [name for name, _ in store.images()] == ["app:1"]
    assert check(store) == []
    make_store(root)  # opening again must not reset index.json
    assert [name for name, _ in store.images()] == ["app:1"]


# --- cache records --------------------------------------------------------------------------


@contract
def cache_record_round_trip(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    assert store.cache_records.get(KEY) is None
    diff_id = commit(store, b"one")
    full = CacheRecord((diff_id,), CREATED, "RUN true", inputs={"cmd": "RUN true"},
                       started=1.5, finished=2.0)
    store.cache_records.put(KEY, full)
    assert store.cache_records.get(KEY) == full
    store.cache_records.put(KEY, cache_record())  # a step that added no layer
    assert store.cache_records.get(KEY) == cache_record()
    for bad in ("0" * 31, "0" * 33, "G" * 32, "../" + "0" * 29, "A" * 32):
        with pytest.raises(ValueError):
            store.cache_records.get(bad)
        with pytest.raises(ValueError):
            store.cache_records.put(bad, cache_record())
    assert tmp_entries(store) == []


@contract
def cache_record_put_refuses_missing_content(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    with pytest.raises(BlobNotFound):
        store.cache_records.put(KEY, cache_record(sha256_bytes(b"not committed")))
    with pytest.raises(BlobNotFound):
        store.cache_records.put(KEY, cache_record(blobs=(sha256_bytes(b"not stored"),)))
    with pytest.raises(InvalidDocument):
        store.cache_records.put(KEY, cache_record("sha256:nope"))
    digest, _ = store.put_blob(b"tar:only a blob")
    with pytest.raises(BlobNotFound):  # a blob is not a layer until its dir is committed
        store.cache_records.put(KEY, cache_record(digest))
    assert store.cache_records.get(KEY) is None


@contract
def cache_record_corrupt_is_a_miss_and_moved_aside(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    for key, junk in ((KEY, b"{not json"), (OTHER_KEY, b'{"diff_ids": "sha256:x"}')):
        (root / "cache" / f"{key}.json").write_bytes(junk)
        assert store.cache_records.get(key) is None
        assert not (root / "cache" / f"{key}.json").exists()
    assert len(os.listdir(root / "cache" / "corrupt")) == 2
    assert check(store) == []
    store.cache_records.put(KEY, cache_record())  # and the key is usable again
    assert store.cache_records.get(KEY) == cache_record()


@contract
def cache_record_with_missing_layer_is_a_miss(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    diff_id = commit(store, b"one")
    store.cache_records.put(KEY, cache_record(diff_id))
    os.chmod(blob_file(store, diff_id), 0o644)
    os.unlink(blob_file(store, diff_id))
    assert store.cache_records.get(KEY) is None


# --- prune ----------------------------------------------------------------------------------


@contract
def prune_keeps_reachable_and_drops_the_rest(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    tagged = build_image(store, b"tagged")
    store.tag("app:1", tagged)
    cached = commit(store, b"cached")
    store.cache_records.put(KEY, cache_record(cached))
    loose_layer = commit(store, b"loose")
    untagged = build_image(store, b"untagged")
    loose_blob, _ = store.put_blob(b"loose blob")
    store.tmp_dir("stale-")
    store.tmp_file("stale-")
    (root / "layers" / (cached.split(":")[1] + ".tmp-crashed")).mkdir()
    store.grace_period = 0.0
    time.sleep(0.01)

    stats = prune(store)

    assert store.resolve("app:1") == tagged
    image = store.manifest(tagged)
    assert store.read_blob(image.config.digest)
    assert all(store.has_layer(d) for d in store.config(image).diff_ids)
    assert store.has_layer(cached) and store.cache_records.get(KEY) is not None
    assert not store.has_layer(loose_layer) and not store.has_blob(loose_layer)
    assert not store.has_blob(untagged.digest) and not store.has_blob(loose_blob)
    assert tmp_entries(store) == []
    assert sorted(os.listdir(root / "layers")) == sorted(
        d.split(":")[1] for d in (cached, *store.config(image).diff_ids)
    )
    assert stats.blobs >= 5 and stats.layers == 3 and stats.tmp_entries == 2
    assert stats.bytes_freed > 0
    assert check(store) == []
    assert prune(store).blobs == 0


@contract
def prune_spares_young_garbage(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    store.grace_period = 3600.0
    loose_layer = commit(store, b"loose")
    loose_blob, _ = store.put_blob(b"loose blob")
    store.tmp_dir("young-")
    assert prune(store) == PruneStats()
    assert store.has_layer(loose_layer) and store.has_blob(loose_blob)
    assert len(tmp_entries(store)) == 1
    # re-putting old garbage makes it young again: a concurrent prune's grace covers it
    age(blob_file(store, loose_blob), 7200)
    store.put_blob(b"loose blob")
    assert prune(store).blobs == 0


@contract
def prune_drops_dangling_and_corrupt_cache_records(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    diff_id = commit(store, b"one")
    store.cache_records.put(KEY, cache_record(diff_id))
    os.chmod(blob_file(store, diff_id), 0o644)
    os.unlink(blob_file(store, diff_id))
    (root / "cache" / f"{OTHER_KEY}.json").write_bytes(b"[")
    store.grace_period = 0.0
    time.sleep(0.01)
    assert prune(store).cache_records == 2
    assert os.listdir(root / "cache") == ["corrupt"]
    assert not store.layer_dir(diff_id).exists()
    assert check(store) == []


@contract
def prune_stops_on_a_corrupt_tagged_manifest(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    image = build_image(store)
    store.tag("app:1", image)
    layer = store.config(store.manifest(image)).diff_ids[0]
    loose, _ = store.put_blob(b"loose")
    damage(blob_file(store, image.digest))
    store.grace_period = 0.0
    time.sleep(0.005)
    with pytest.raises(StoreError):
        prune(store)
    assert store.has_blob(loose) and store.has_layer(layer)


@contract
def prune_waits_for_shared_holders(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    store.grace_period = 0.0
    locked, done = _FORK.Event(), _FORK.Queue()

    def pruner() -> None:
        locked.wait(10)
        prune(make_store(root))
        done.put(time.monotonic())

    # Fork first: a child forked while the lock is held would share it (see Store.lock).
    child = _FORK.Process(target=pruner)
    child.start()
    with store.lock(exclusive=False):
        with store.lock(exclusive=False):  # re-entrant
            store.put_blob(b"while holding the lock")
        locked.set()
        time.sleep(0.2)
        released = time.monotonic()
    child.join(10)
    assert child.exitcode == 0
    assert done.get(timeout=1) >= released
    with store.lock(exclusive=False), pytest.raises(StoreError), store.lock(exclusive=True):
        pass


# --- check ----------------------------------------------------------------------------------


@contract
def check_finds_a_corrupted_blob(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    digest, _ = store.put_blob(b"hello")
    assert check(store) == []
    damage(blob_file(store, digest))
    problems = check(store)
    assert len(problems) == 1 and digest in problems[0]


@contract
def check_finds_a_layer_without_its_blob(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    diff_id = commit(store, b"one")
    os.chmod(blob_file(store, diff_id), 0o644)
    os.unlink(blob_file(store, diff_id))
    problems = check(store)
    assert len(problems) == 1 and diff_id in problems[0]


@contract
def check_finds_a_dangling_tag(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    image = build_image(store)
    store.tag("app:1", image)
    manifest = store.manifest(image)
    os.unlink(blob_file(store, manifest.config.digest))
    problems = check(store)
    assert problems and all(manifest.config.digest in p for p in problems)
    os.unlink(blob_file(store, image.digest))
    problems = check(store)
    assert len(problems) == 1 and image.digest in problems[0]


@contract
def check_finds_a_dangling_cache_record(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    diff_id = commit(store, b"one")
    digest, _ = store.put_blob(b"config")
    store.cache_records.put(KEY, cache_record(diff_id, blobs=(digest,)))
    assert check(store) == []
    os.unlink(blob_file(store, digest))
    problems = check(store)
    assert len(problems) == 1 and KEY in problems[0] and digest in problems[0]


# --- crash safety ---------------------------------------------------------------------------

# The filesystem calls the store makes that change state; a "crash" is os._exit just before
# the n-th of them, in a forked child, for every n until the operation completes.
_STEPS = ("rename", "link", "unlink", "fsync", "utime", "chmod", "rmdir", "mkdir")
_CRASHED = 77


def _arm(countdown: int) -> None:
    remaining = [countdown]
    for name in _STEPS:
        real = getattr(os, name)

        def step(*args: object, _real: Callable[..., object] = real, **kw: object) -> object:
            if remaining[0] == 0:
                os._exit(_CRASHED)
            remaining[0] -= 1
            return _real(*args, **kw)

        setattr(os, name, step)


def _crash_at(countdown: int, operation: Callable[[], object]) -> bool:
    """Run `operation` in a child that dies at step `countdown`; True if it died."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        code = 1
        try:
            _arm(countdown)
            operation()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, _CRASHED), f"child failed with {code} at step {countdown}"
    return code == _CRASHED


def _crash_everywhere(
    make_store: MakeStore, root: Path, setup: Callable[[Store], Callable[[Store], object]]
) -> int:
    """For each step n: set up a fresh store, crash the operation at n, then require a clean
    check, a successful retry, a clean check, and a prune that clears all the garbage."""
    for n in range(200):
        store = make_store(root / str(n))
        operation = setup(store)
        if not _crash_at(n, lambda: operation(store)):  # noqa: B023 (called at once)
            return n
        assert check(store) == [], f"step {n}"
        operation(store)
        assert check(store) == [], f"step {n}, after the retry"
        store.grace_period = 0.0
        time.sleep(0.005)
        prune(store)
        assert tmp_entries(store) == [], f"step {n}, after prune"
        assert check(store) == []
    raise AssertionError("the operation never completed")


@contract
def crash_anywhere_in_put_blob(make_store: MakeStore, root: Path) -> None:
    def setup(store: Store) -> Callable[[Store], object]:
        return lambda s: s.put_blob(b"payload")

    assert _crash_everywhere(make_store, root, setup) >= 3


@contract
def crash_anywhere_in_commit_layer(make_store: MakeStore, root: Path) -> None:
    def setup(store: Store) -> Callable[[Store], object]:
        def operation(s: Store) -> None:
            upper, diff_id, tar = make_layer(s, b"layer")
            s.commit_layer(upper, diff_id, tar)
            assert (s.layer_dir(diff_id) / "file").read_bytes() == b"layer"

        return operation

    assert _crash_everywhere(make_store, root, setup) >= 6


@contract
def crash_anywhere_in_image_tag_and_cache(make_store: MakeStore, root: Path) -> None:
    def setup(store: Store) -> Callable[[Store], object]:
        store.tag("old:1", build_image(store, b"old"))
        diff_id = commit(store, b"base")

        def operation(s: Store) -> None:
            config = ImageConfig("amd64", "linux", diff_ids=(diff_id,))
            desc = s.put_image(config, [s.descriptor(diff_id, MEDIA_TYPE_LAYER)])
            s.cache_records.put(KEY, cache_record(diff_id, blobs=(desc.digest,)))
            s.tag("app:1", desc)
            s.untag("old:1")
            assert [name for name, _ in s.images()] == ["app:1"]

        return operation

    assert _crash_everywhere(make_store, root, setup) >= 10


@contract
def crash_anywhere_in_prune(make_store: MakeStore, root: Path) -> None:
    def setup(store: Store) -> Callable[[Store], object]:
        store.tag("app:1", build_image(store, b"kept"))
        for i in range(2):
            commit(store, b"loose %d" % i)
        store.tmp_dir("stale-")
        store.grace_period = 0.0
        time.sleep(0.005)

        def operation(s: Store) -> None:
            s.grace_period = 0.0
            prune(s)
            assert len(os.listdir(s.root / "layers")) == 1

        return operation

    assert _crash_everywhere(make_store, root, setup) >= 4


@contract
def leftovers_of_a_crash_are_not_problems(make_store: MakeStore, root: Path) -> None:
    store = make_store(root)
    store.tag("app:1", build_image(store))
    (root / "tmp" / "index-half").write_bytes(b'{"schemaVersion":2,"manifests":[{"media')
    (root / "tmp" / "blob-half").write_bytes(b"tar:ba")
    (root / "tmp" / "upper-x").mkdir()
    (root / "layers" / (sha256_bytes(b"x").split(":")[1] + ".tmp-y")).mkdir()
    assert check(store) == []
    store.tag("app:2", build_image(store, b"two"))
    assert store.put_blob(b"tar:base")[0] == sha256_bytes(b"tar:base")
    assert [name for name, _ in store.images()] == ["app:1", "app:2"]
