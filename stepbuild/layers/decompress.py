"""Compressed layer tars in: gzip, zstd or plain, told apart by their magic bytes.

`decompress_to` streams what a blob holds into a file while hashing it, so a layer's diff_id is
checked on exactly the bytes that are used, and a decompression bomb ends in ENOSPC (an
OSError), never in memory. Used for every layer that comes from elsewhere: a pull, an archive,
the team cache.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from stepbuild.errors import LayerError
from stepbuild.layers.tar import Readable
from stepbuild.oci.digest import PREFIX

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20


def compression_of(head: bytes) -> str | None:
    """"gzip", "zstd" or None (plain) for the first bytes of a blob."""
    return "gzip" if head.startswith(GZIP_MAGIC) else "zstd" if head == ZSTD_MAGIC else None


def decompress_to(raw: Readable, out: Path, label: str) -> str:
    """Write the tar `raw` holds (gzip, zstd or plain, by magic bytes) to `out`, streaming;
    return its sha256. A decompression bomb ends in ENOSPC (OSError), not in memory."""
    from stepbuild.layers.unpack import decompressor

    head = read_up_to(raw, 4)
    stream: Readable = Prefixed(head, raw)
    kind = compression_of(head)
    if kind is not None:
        stream = decompressor(stream, kind)  # type: ignore[arg-type]
    sha = hashlib.sha256()
    try:
        with open(out, "wb") as f:
            while chunk := stream.read(_CHUNK):
                sha.update(chunk)
                f.write(chunk)
    except LayerError as exc:
        raise LayerError(f"{label}: {exc.message}") from exc
    return PREFIX + sha.hexdigest()


def read_up_to(raw: Readable, n: int) -> bytes:
    data = b""
    while len(data) < n and (chunk := raw.read(n - len(data))):
        data += chunk
    return data


class Prefixed:
    """`head` then the rest of `stream`: bytes already read for a magic-number check."""

    def __init__(self, head: bytes, stream: Readable) -> None:
        self._head = head
        self._stream = stream

    def read(self, n: int = -1, /) -> bytes:
        if self._head:
            if n < 0:
                data, self._head = self._head + self._stream.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            return data
        return self._stream.read(n)


