"""compress.py: deterministic gzip/zstd, and the store's record of the compressed blobs it made
(`store.compressed_records`, kept by prune while the layer is reachable, checked by
`check`)."""

from __future__ import annotations

import gzip
import io
import os
import sys
import zlib
from pathlib import Path

import pytest
import zstandard

from stepbuild.errors import BlobNotFound, DigestMismatch, UsageError
from stepbuild.layers import compress
from stepbuild.layers.compress import compress_stream, compressed_layer, compression_of
from stepbuild.oci.digest import sha256_bytes
from stepbuild.oci.documents import (
    DOCKER_LAYER_GZIP,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    Descriptor,
)
from stepbuild.store.gc import check, prune
from stepbuild.store.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from store_contract import age, blob_file, build_image, cache_record, damage  # noqa: E402

DATA = b"".join(b"line %d of a layer that compresses well\n" % i for i in range(50_000))


def _compress(data: bytes, kind: str) -> tuple[bytes, str, int]:
    out = io.BytesIO()
    digest, size = compress_stream(io.BytesIO(data), out, kind, size=len(data))
    return out.getvalue(), digest, size


# --- the bytes -------------------------------------------------------------------------------


def test_gzip_header_is_fixed_and_the_stream_is_standard() -> None:
    blob, digest, size = _compress(DATA, "gzip")
    # ID1 ID2 CM=8, no flags (no name, no comment), MTIME 0, XFL 0, OS 255
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    assert gzip.decompress(blob) == DATA
    assert (digest, size) == (sha256_bytes(blob), len(blob))
    assert len(blob) < len(DATA) // 10


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_same_input_same_bytes(kind: str) -> None:
    first = _compress(DATA, kind)
    assert _compress(DATA, kind) == first
    assert _compress(DATA + b"x", kind)[1] != first[1]


def test_zstd_is_one_frame_with_size_and_checksum() -> None:
    blob, _, _ = _compress(DATA, "zstd")
    params = zstandard.get_frame_parameters(blob)
    assert params.content_size == len(DATA) and params.has_checksum
    assert zstandard.ZstdDecompressor().decompress(blob) == DATA


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_empty_input(kind: str) -> None:
    blob, _, _ = _compress(b"", kind)
    decompressed = (gzip.decompress(blob) if kind == "gzip"
                    else zstandard.ZstdDecompressor().decompress(blob))
    assert decompressed == b""


def test_gzip_matches_zlib_at_the_fixed_level() -> None:
    """The deflate body is zlib's at GZIP_LEVEL: an independent encoder gives the same."""
    blob, _, _ = _compress(DATA, "gzip")
    deflate = zlib.compressobj(compress.GZIP_LEVEL, zlib.DEFLATED, -15)
    assert blob[10:-8] == deflate.compress(DATA) + deflate.flush()


def test_input_digest_is_checked() -> None:
    with pytest.raises(DigestMismatch):
        compress_stream(io.BytesIO(DATA), io.BytesIO(), "gzip", size=len(DATA),
                        expect=sha256_bytes(b"other"))
    with pytest.raises(DigestMismatch):  # shorter than announced
        compress_stream(io.BytesIO(DATA), io.BytesIO(), "zstd", size=len(DATA) + 1)


def test_names_and_media_types() -> None:
    assert compress.media_type("gzip") == MEDIA_TYPE_LAYER_GZIP
    assert compress.media_type("zstd") == MEDIA_TYPE_LAYER_ZSTD
    assert compress.media_type("none") == MEDIA_TYPE_LAYER
    assert compression_of(DOCKER_LAYER_GZIP) == "gzip"
    assert compression_of("application/octet-stream") is None
    with pytest.raises(UsageError):
        compress.check_compression("xz")


# --- compressed_layer and the store ------------------------------------------------------------


def _layer(store: Store, data: bytes = DATA) -> str:
    digest, _ = store.put_blob(data)
    return digest


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_compressed_once_then_reused(kind: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path)
    diff_id = _layer(store)
    desc = compressed_layer(store, diff_id, kind)
    assert desc.media_type == compress.media_type(kind)
    assert store.read_blob(desc.digest)[:2] in (b"\x1f\x8b", b"\x28\xb5")
    assert store.compressed_records.get(diff_id, kind) == desc
    blobs = sorted(os.listdir(tmp_path / "blobs" / "sha256"))

    def fail(*args: object, **kw: object) -> None:
        raise AssertionError("compressed again")

    monkeypatch.setattr(compress, "compress_stream", fail)
    assert compressed_layer(store, diff_id, kind) == desc
    assert sorted(os.listdir(tmp_path / "blobs" / "sha256")) == blobs
    assert os.listdir(tmp_path / "compressed") == [f"{diff_id[7:]}.{kind}.json"]
    assert os.listdir(tmp_path / "tmp") == []
    assert check(store) == []


def test_digest_is_stable_across_stores(tmp_path: Path) -> None:
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    for kind in ("gzip", "zstd"):
        assert compressed_layer(a, _layer(a), kind) == compressed_layer(b, _layer(b), kind)


def test_none_is_the_layer_blob(tmp_path: Path) -> None:
    store = Store(tmp_path)
    diff_id = _layer(store)
    assert compressed_layer(store, diff_id, "none") == Descriptor(MEDIA_TYPE_LAYER, diff_id,
                                                                  len(DATA))
    assert not (tmp_path / "compressed").exists()


def test_a_damaged_layer_is_not_compressed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    diff_id = _layer(store)
    damage(blob_file(store, diff_id))
    with pytest.raises(DigestMismatch):
        compressed_layer(store, diff_id, "gzip")
    assert store.compressed_records.get(diff_id, "gzip") is None
    assert os.listdir(tmp_path / "tmp") == []


def test_missing_layer(tmp_path: Path) -> None:
    with pytest.raises(BlobNotFound):
        compressed_layer(Store(tmp_path), sha256_bytes(b"nothing"), "gzip")


def test_bad_records_are_misses_and_get_replaced(tmp_path: Path) -> None:
    store = Store(tmp_path)
    diff_id = _layer(store)
    desc = compressed_layer(store, diff_id, "gzip")
    record = tmp_path / "compressed" / f"{diff_id[7:]}.gzip.json"
    for bad in (b"{", b"[]", record.read_bytes().replace(b"gzip", b"zstd")):
        record.write_bytes(bad)
        assert store.compressed_records.get(diff_id, "gzip") is None
        assert check(store) != []
        assert compressed_layer(store, diff_id, "gzip") == desc
        assert check(store) == []
    os.unlink(blob_file(store, desc.digest))  # a record whose blob is gone
    assert store.compressed_records.get(diff_id, "gzip") is None
    assert any("is missing" in p for p in check(store))
    assert compressed_layer(store, diff_id, "gzip") == desc


def test_record_needs_both_blobs(tmp_path: Path) -> None:
    store = Store(tmp_path)
    diff_id = _layer(store)
    compressed, size = store.put_blob(b"pretend gzip")
    desc = Descriptor(MEDIA_TYPE_LAYER_GZIP, compressed, size)
    with pytest.raises(BlobNotFound):
        store.compressed_records.put(sha256_bytes(b"absent"), "gzip", desc)
    with pytest.raises(BlobNotFound):
        store.compressed_records.put(diff_id, "gzip", Descriptor(MEDIA_TYPE_LAYER_GZIP,
                                                            sha256_bytes(b"x"), 1))
    with pytest.raises(DigestMismatch):
        store.compressed_records.put(diff_id, "gzip", Descriptor(MEDIA_TYPE_LAYER_GZIP, compressed,
                                                            size + 1))
    with pytest.raises(ValueError):
        store.compressed_records.put(diff_id, "../x", desc)
    store.compressed_records.put(diff_id, "gzip", desc)
    assert store.compressed_records.get(diff_id, "gzip") == desc


# --- prune and check ---------------------------------------------------------------------------


def _tagged_with_compressed(store: Store) -> tuple[str, Descriptor, Descriptor]:
    image = build_image(store, b"layer")
    store.tag("app:1", image)
    diff_id = store.config(store.manifest(image)).diff_ids[0]
    return diff_id, compressed_layer(store, diff_id, "gzip"), compressed_layer(store, diff_id,
                                                                                "zstd")


def test_prune_keeps_compressed_blobs_of_reachable_layers(tmp_path: Path) -> None:
    store = Store(tmp_path, grace_period=0)
    diff_id, gz, zst = _tagged_with_compressed(store)
    stats = prune(store, keep_cache=False)
    assert stats.compressed_records == 0 and stats.blobs == 0
    assert store.compressed_records.get(diff_id, "gzip") == gz
    assert store.compressed_records.get(diff_id, "zstd") == zst
    assert check(store) == []


def test_prune_drops_compressed_blobs_with_their_layer(tmp_path: Path) -> None:
    store = Store(tmp_path, grace_period=0)
    diff_id, gz, zst = _tagged_with_compressed(store)
    store.untag("app:1")
    stats = prune(store, keep_cache=False)
    assert stats.compressed_records == 2
    for digest in (diff_id, gz.digest, zst.digest):
        assert not store.has_blob(digest)
    assert os.listdir(tmp_path / "compressed") == []
    assert check(store) == []


def test_a_young_record_keeps_both_its_blobs(tmp_path: Path) -> None:
    store = Store(tmp_path, grace_period=3600)
    diff_id, gz, _ = _tagged_with_compressed(store)
    store.untag("app:1")
    for entry in [*os.scandir(tmp_path / "blobs" / "sha256"), *os.scandir(tmp_path / "layers")]:
        age(Path(entry.path), 7200)  # the layer and the blobs are old, the records young
    prune(store, keep_cache=False)
    assert store.has_blob(diff_id) and store.has_blob(gz.digest)
    assert check(store) == []
    for entry in os.scandir(tmp_path / "compressed"):
        age(Path(entry.path), 7200)
    assert prune(store, keep_cache=False).compressed_records == 2
    assert not store.has_blob(diff_id) and not store.has_blob(gz.digest)
    assert check(store) == []


def test_prune_keeps_compressed_blobs_of_cached_layers(tmp_path: Path) -> None:
    store = Store(tmp_path, grace_period=0)
    diff_id = store.config(store.manifest(build_image(store, b"cached"))).diff_ids[0]
    store.cache_records.put("0123456789abcdef0123456789abcdef", cache_record(diff_id))
    gz = compressed_layer(store, diff_id, "gzip")
    prune(store, keep_cache=True)
    assert store.compressed_records.get(diff_id, "gzip") == gz


def test_check_reports_stray_files_in_compressed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _tagged_with_compressed(store)
    (tmp_path / "compressed" / "junk").write_text("x")
    assert check(store) == ["compressed/junk: not a valid compressed-blob record"]
