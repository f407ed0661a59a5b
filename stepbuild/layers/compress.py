"""Deterministic layer compression (gzip, zstd, none) and the store's memory of what it made.

A layer is stored uncompressed (its blob is named by its diff_id). Exports and pushes want it
compressed, and its compressed digest must be stable: the same layer gives the same bytes every
time, on every machine with the same zlib/zstd, so a registry or an archive never sees two
digests for one layer. What makes the bytes fixed:

- gzip (RFC 1952), written by hand around a raw zlib deflate stream: the 10-byte header is
  always `1f 8b 08 00 00000000 00 ff` (no FNAME/FCOMMENT/FEXTRA, MTIME 0, XFL 0, OS 255
  "unknown", as Go's compress/gzip writes it), level `GZIP_LEVEL`, default strategy, 15-bit
  window, one member, the input fed in fixed 1 MiB chunks. (Python's `gzip` module would put
  the file name and the current time in the header.)
- zstd (RFC 8878): one frame at level `ZSTD_LEVEL`, single-threaded (multi-threaded zstd
  splits the input differently), the content size in the frame header, a content checksum,
  no dictionary.
- none: the layer blob itself (`application/vnd.oci.image.layer.v1.tar`).

The compressed bytes depend on the zlib and libzstd versions: a different zlib (zlib-ng, say)
gives other, equally valid bytes. That is why the store *records* each compressed blob it made
(`store.compressed_records`, store/records.py): once a layer has been compressed in a store,
every later export or push from that store reuses those exact bytes and never recompresses.

Entry point for exporters and the registry client: `compressed_layer(store, diff_id, kind)`.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from stepbuild.errors import DigestMismatch, UsageError
from stepbuild.oci.digest import PREFIX
from stepbuild.oci.documents import (
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    Descriptor,
)

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "GZIP_LEVEL",
    "ZSTD_LEVEL",
    "check_compression",
    "compress_stream",
    "compressed_layer",
    "compression_of",
    "media_type",
]

GZIP = "gzip"
ZSTD = "zstd"
NONE = "none"
COMPRESSIONS = (GZIP, ZSTD, NONE)
DEFAULT_COMPRESSION = GZIP
GZIP_LEVEL = 6  # zlib's and Go's default: most of level 9's ratio at a third of its time
ZSTD_LEVEL = 3  # libzstd's default level

_MEDIA_TYPES = {GZIP: MEDIA_TYPE_LAYER_GZIP, ZSTD: MEDIA_TYPE_LAYER_ZSTD, NONE: MEDIA_TYPE_LAYER}
_BY_MEDIA_TYPE = {
    MEDIA_TYPE_LAYER: NONE,
    DOCKER_LAYER: NONE,
    MEDIA_TYPE_LAYER_GZIP: GZIP,
    DOCKER_LAYER_GZIP: GZIP,
    MEDIA_TYPE_LAYER_ZSTD: ZSTD,
}
# ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=255 (RFC 1952, 2.3)
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_CHUNK = 1 << 20


def check_compression(name: str) -> str:
    """`name` if it is one of COMPRESSIONS, else UsageError."""
    if name not in COMPRESSIONS:
        raise UsageError(f"unknown compression {name!r}", hint="use gzip, zstd or none")
    return name


def media_type(compression: str) -> str:
    """The OCI layer media type of a compression."""
    return _MEDIA_TYPES[check_compression(compression)]


def compression_of(layer_media_type: str) -> str | None:
    """The compression a layer media type says its blob has (None: not a layer type we know)."""
    return _BY_MEDIA_TYPE.get(layer_media_type)


class _Gzip:
    """A raw deflate stream between a fixed gzip header and the CRC-32/ISIZE trailer."""

    def __init__(self) -> None:
        self._deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, 8,
                                         zlib.Z_DEFAULT_STRATEGY)
        self._crc = 0
        self._size = 0
        self._started = False

    def compress(self, data: bytes) -> bytes:
        head = b"" if self._started else _GZIP_HEADER
        self._started = True
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        return head + self._deflate.compress(data)

    def flush(self) -> bytes:
        head = b"" if self._started else _GZIP_HEADER
        self._started = True
        trailer = struct.pack("<II", self._crc, self._size & 0xFFFFFFFF)
        return head + self._deflate.flush(zlib.Z_FINISH) + trailer


def _compressor(compression: str, size: int) -> Any:
    if compression == GZIP:
        return _Gzip()
    import zstandard  # a declared dependency; imported here so other commands never pay for it

    context = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True,
                                       write_content_size=True, threads=0)
    return context.compressobj(size=size)


def compress_stream(src: BinaryIO, dst: BinaryIO, compression: str, *, size: int,
                    expect: str | None = None) -> tuple[str, int]:
    """Compress the first `size` bytes of `src` into `dst`; return the compressed
    `(digest, size)`.

    `compression` is gzip or zstd (the zstd frame header records `size`). If `src` ends
    early, or `expect` is given and the sha256 of the bytes read is not it (a layer's
    diff_id), `DigestMismatch` is raised before the stream is finished; what was written to
    `dst` is garbage for the caller to delete. Neither file is closed or synced here.
    """
    if compression not in (GZIP, ZSTD):
        raise ValueError(f"compress_stream: {compression!r} is not a compression")
    compressor = _compressor(compression, size)
    read_hash, out_hash = hashlib.sha256(), hashlib.sha256()
    left, written = size, 0
    while left and (chunk := src.read(min(left, _CHUNK))):
        read_hash.update(chunk)
        left -= len(chunk)
        out = compressor.compress(chunk)
        out_hash.update(out)
        dst.write(out)
        written += len(out)
    actual = PREFIX + read_hash.hexdigest()
    if left or (expect is not None and actual != expect):
        raise DigestMismatch(expect or actual, actual, expected_size=size,
                             actual_size=size - left)
    out = compressor.flush()
    out_hash.update(out)
    dst.write(out)
    written += len(out)
    return PREFIX + out_hash.hexdigest(), written


class CompressedBlobs(Protocol):
    """The store's records of the compressed blobs it made (`store.records.CompressedRecords`)."""

    def get(self, diff_id: str, compression: str) -> Descriptor | None: ...

    def put(self, diff_id: str, compression: str, blob: Descriptor) -> None: ...


class CompressingStore(Protocol):
    """What `compressed_layer` needs of the store (`store.Store` is one; layers/ is below
    store/ and names only the methods it calls)."""

    @property
    def compressed_records(self) -> CompressedBlobs: ...

    def lock(self, exclusive: bool = True) -> AbstractContextManager[None]: ...

    def descriptor(self, digest: str, media_type: str) -> Descriptor: ...

    def blob_path(self, digest: str) -> Path: ...

    def tmp_file(self, prefix: str) -> Path: ...

    def ingest_blob(self, path: Path, digest: str | None = None) -> tuple[str, int]: ...


def compressed_layer(store: CompressingStore, diff_id: str, compression: str) -> Descriptor:
    """The descriptor of layer `diff_id` compressed with `compression`, made once per store.

    - none: the layer blob itself (`BlobNotFound` if the store lacks it).
    - gzip/zstd: the blob the store recorded for (diff_id, compression) if it has one;
      otherwise the layer blob is read (verified against `diff_id`: `DigestMismatch`),
      compressed into tmp/, ingested as a blob (fsynced, renamed), and only then recorded.
      Later calls return the same descriptor without reading the layer again.

    Holds the store lock shared throughout, so a concurrent prune waits. Concurrent callers
    for the same layer each compress it and produce the same bytes; the first blob wins and
    the record is rewritten with the same content. Safe to call from several threads.
    """
    check_compression(compression)
    if compression == NONE:
        return store.descriptor(diff_id, MEDIA_TYPE_LAYER)
    with store.lock(exclusive=False):
        found = store.compressed_records.get(diff_id, compression)
        if found is not None:
            return found
        source = store.blob_path(diff_id)
        tmp = store.tmp_file(f"{compression}-")
        try:
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                size = os.fstat(src.fileno()).st_size
                digest, compressed_size = compress_stream(src, dst, compression, size=size,
                                                          expect=diff_id)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        store.ingest_blob(tmp, digest)  # consumes tmp (fsync, rename) or deletes it
        descriptor = Descriptor(media_type(compression), digest, compressed_size)
        store.compressed_records.put(diff_id, compression, descriptor)
        return descriptor
