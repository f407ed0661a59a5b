"""layout.py: one name per folder and file under the store root, the same names as before the
store owned them all, and cheap enough for the no-op path to import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stepbuild.build.mounts.cache import cache_mounts_dir
from stepbuild.cli.noop import Witness, _record_path
from stepbuild.store.layout import StoreLayout, cache_mount_name
from stepbuild.store.store import Store
from stepbuild.teamcache.registry import writer_id

ROOT = Path("/var/lib/stepbuild")

# Every path the layout names, and where it has always been (existing stores keep working).
NAMES = {
    "oci_layout": "oci-layout",
    "index": "index.json",
    "overlay_xattrs": "overlay-xattrs",
    "blobs": "blobs/sha256",
    "layers": "layers",
    "cache": "cache",
    "corrupt": "cache/corrupt",
    "compressed": "compressed",
    "remote_blobs": "remote-blobs",
    "import_cache": "import-cache",
    "pushed": "pushed",
    "tmp": "tmp",
    "lock": "lock",
    "index_lock": "index.lock",
    "parse_cache": "parse-cache",
    "context_cache": "context-cache",
    "cache_mounts": "cache-mounts",
    "fingerprints": "fingerprints",
    "explain": "explain",
    "builds": "builds",
    "writer_id": "cache-writer-id",
    "writer_lock": "cache-writer.lock",
}


@pytest.mark.parametrize(("name", "where"), NAMES.items())
def test_each_path_keeps_its_name(name: str, where: str) -> None:
    assert getattr(StoreLayout(ROOT), name) == ROOT / where


def test_the_table_covers_every_path() -> None:
    properties = {n for n, v in vars(StoreLayout).items() if isinstance(v, property)}
    assert properties == set(NAMES)


def test_the_store_creates_its_layout_there(tmp_path: Path) -> None:
    store = Store(tmp_path)
    layout = store.layout
    assert layout == StoreLayout(tmp_path)
    for path in (layout.blobs, layout.layers, layout.cache, layout.corrupt, layout.tmp):
        assert path.is_dir(), path
    assert layout.oci_layout.is_file() and layout.index.is_file()
    with store.lock(exclusive=False), store.index_lock():
        assert layout.lock.is_file() and layout.index_lock.is_file()


def test_the_other_owners_ask_the_layout(tmp_path: Path) -> None:
    layout = StoreLayout(tmp_path)
    assert cache_mounts_dir(tmp_path) == layout.cache_mounts
    witness = Witness(tmp_path, "i" * 32, "f" * 32, racy=False)
    assert _record_path(witness) == layout.fingerprints / f"{'i' * 32}.json"
    writer_id(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [layout.writer_id.name]


@pytest.mark.parametrize("module", ["stepbuild.store.layout", "stepbuild.cli.noop"])
def test_naming_a_folder_does_not_import_the_store(module: str) -> None:
    """The no-op path (cli/noop.py) runs before anything heavy is imported."""
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if 'store.' in m))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert out.strip() == "['stepbuild.store.layout']"


def test_cache_mount_names_are_those_earlier_versions_gave() -> None:
    # The value run_mounts.cache_dir_name gave before the store named these dirs: existing
    # cache mounts and shared cache-mount records must keep their names.
    identity = {"id": "/root/.cache/pip", "sharing": "shared", "from": None, "é": "ü"}
    assert cache_mount_name(identity) == "78ed43a21ac9f6b57f5282eeadba2dd8"
    layout = StoreLayout(Path("/store"))
    assert layout.cache_mount(identity) == Path(
        "/store/cache-mounts/78ed43a21ac9f6b57f5282eeadba2dd8")
