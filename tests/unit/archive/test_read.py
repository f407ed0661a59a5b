"""archive/read.py's LayoutSource: an OCI layout dir being imported may hold a FIFO, a device or
a symlink where a document or blob should be (docs/security.md families D and J). Each is
refused as "not a regular file" at once, never waited on: the reads run in a thread with a
timeout, so a regression fails instead of hanging.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepbuild.archive.read import LayoutSource
from stepbuild.errors import InvalidDocument
from stepbuild.store.store import Store
from tests.fifos import promptly, release

BLOB = "blobs/sha256/" + "ab" * 32



@pytest.fixture
def layout(tmp_path: Path) -> Iterator[LayoutSource]:
    root = tmp_path / "layout"
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    os.mkfifo(root / "index.json")
    os.mkfifo(root / BLOB)
    source = LayoutSource(root, "layout test")
    yield source
    source.close()
    for fifo in (root / "index.json", root / BLOB):  # let go of a reader left blocked
        release(fifo)


def test_a_regular_file_is_read(layout: LayoutSource) -> None:
    assert layout.read("oci-layout", 100) == b'{"imageLayoutVersion":"1.0.0"}'


def test_a_fifo_document_is_refused_without_hanging(layout: LayoutSource) -> None:
    with pytest.raises(InvalidDocument, match="not a regular file"):
        promptly(lambda: layout.read("index.json", 1 << 20))
    with pytest.raises(InvalidDocument, match="not a regular file"):
        promptly(lambda: layout.size("index.json"))


def test_a_fifo_blob_is_refused_without_hanging(layout: LayoutSource, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")

    def import_blob() -> None:
        with layout.verified_blob(store, BLOB, None):
            pass

    with pytest.raises(InvalidDocument, match="not a regular file"):
        promptly(import_blob)
    assert not list(store.layout.tmp.glob("import-blob-*"))  # nothing left behind
