"""Store: the contract suite (tests/store_contract.py) on a real directory — blobs, layers,
tags, crash safety; the record and gc families run in test_records.py and test_gc.py — plus
what is specific to this implementation (the on-disk layout other tools read)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from stepbuild.oci.documents import ANNOTATION_REF_NAME, validate_layout
from stepbuild.store.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from store_contract import CHECKS, Check, build_image, checks_named  # noqa: E402

ELSEWHERE = checks_named("cache_record", "prune", "check")  # test_records.py, test_gc.py


@pytest.mark.parametrize("check", [c for c in CHECKS if c not in ELSEWHERE],
                         ids=lambda c: c.__name__)
def test_contract(check: Check, tmp_path: Path) -> None:
    check(Store, tmp_path)


def test_new_store_is_an_oci_layout_with_private_dirs(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "store"
    Store(root)
    assert json.loads((root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_bytes())
    assert index["schemaVersion"] == 2 and index["manifests"] == []
    for name in ("", "blobs", "blobs/sha256", "layers", "cache", "tmp"):
        assert stat.S_IMODE(os.stat(root / name).st_mode) == 0o700, name
    assert validate_layout(root) == []


def test_tags_are_ref_name_annotations(tmp_path: Path) -> None:
    store = Store(tmp_path)
    image = build_image(store)
    store.tag("localhost:5000/team/app:1.0", image)
    (entry,) = json.loads((tmp_path / "index.json").read_bytes())["manifests"]
    assert entry["annotations"] == {ANNOTATION_REF_NAME: "localhost:5000/team/app:1.0"}
    assert entry["digest"] == image.digest
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    assert validate_layout(tmp_path) == []


def test_blobs_are_read_only(tmp_path: Path) -> None:
    store = Store(tmp_path)
    digest, _ = store.put_blob(b"x")
    assert stat.S_IMODE(store.blob_path(digest).stat().st_mode) == 0o444


def test_a_read_only_layout_opens_without_writing(tmp_path: Path) -> None:
    Store(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    Store(tmp_path).images()
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_umoci_and_skopeo_read_the_store(tmp_path: Path) -> None:
    # scripts/setup.sh installs both: a missing one is a failure, not a skip
    assert shutil.which("umoci") and shutil.which("skopeo"), "install umoci and skopeo"
    store = Store(tmp_path / "store")
    store.tag("app:1.0", build_image(store))
    ref = f"{tmp_path / 'store'}:app:1.0"
    subprocess.run(["umoci", "stat", "--image", ref], check=True, capture_output=True)
    inspect = subprocess.run(
        ["skopeo", "inspect", f"oci:{ref}"], check=True, capture_output=True, text=True
    )
    assert json.loads(inspect.stdout)["Architecture"] == "amd64"


def test_the_first_lock_clears_the_work_of_dead_builders_only(tmp_path: Path) -> None:
    from stepbuild.store.stale import dead_work

    root = tmp_path / "store"
    Store(root)
    code = ("import sys; from stepbuild.store.store import Store;"
            " s = Store(sys.argv[1]); d = s.tmp_dir('step-'); (d / 'f').write_bytes(b'x' * 9000);"
            " s.tmp_file('pull-blob-'); print(d)")
    project = Path(__file__).resolve().parents[3]
    dead = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True,
                          text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(project)}).stdout.strip()
    store = Store(root)
    live = store.tmp_dir("step-")
    untagged = root / "tmp" / "old-style-dir"
    untagged.mkdir()
    leftovers = dead_work(store.layout)
    assert [w.path for w in leftovers if w.path == Path(dead)] == [Path(dead)]
    assert len(leftovers) == 2 and sum(w.size for w in leftovers) >= 9000
    with store.lock(exclusive=False):
        pass
    assert sorted(p.name for p in (root / "tmp").iterdir()) == sorted(
        [live.name, untagged.name])
    assert dead_work(store.layout) == []


def test_an_index_of_two_platforms_is_tagged_like_an_image(tmp_path: Path) -> None:
    from dataclasses import replace

    from stepbuild.errors import InvalidDocument
    from stepbuild.oci.documents import MEDIA_TYPE_INDEX

    store = Store(tmp_path / "store")
    amd64 = build_image(store, b"amd64")
    arm64 = replace(build_image(store, b"arm64"), platform={"architecture": "arm64",
                                                             "os": "linux"})
    index = store.put_index([amd64, arm64])
    assert index.media_type == MEDIA_TYPE_INDEX
    assert store.put_index([amd64, arm64]) == index  # idempotent
    store.tag("multi:1", index)
    resolved = store.resolve("multi:1")
    assert resolved is not None and resolved.digest == index.digest
    entries = store.index(resolved).manifests
    assert [e.platform for e in entries] == [{"architecture": "amd64", "os": "linux"},
                                             {"architecture": "arm64", "os": "linux"}]
    with pytest.raises(InvalidDocument, match="a second linux/amd64"):
        store.put_index([amd64, amd64])
    with pytest.raises(InvalidDocument, match="with a platform"):
        store.put_index([replace(amd64, platform=None)])
