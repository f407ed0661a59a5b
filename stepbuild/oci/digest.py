"""sha256 digests: parse, compute, verify.

A digest names content: `sha256:` + 64 lower-case hex digits, the only algorithm the store
accepts. Digests become file names (`blobs/sha256/<hex>`, `layers/<hex>`), so `parse_digest`
is strict: anything else (other algorithms, upper case, `..`, `/`, NUL) is refused before it
gets near a path. Vocabulary: a *digest* names a blob as stored; a *diff_id* is the digest of
an uncompressed layer tar. Both have this same form.

No store logic here; `store/store.py` decides where files live.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import BinaryIO

from stepbuild.errors import DigestMismatch, InvalidDigest

ALGORITHM = "sha256"
PREFIX = "sha256:"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


def parse_digest(value: object) -> tuple[str, str]:
    """Split `sha256:<hex>` into `("sha256", hex)`; raise `InvalidDigest` for anything else.

    `fullmatch` on a str: no trailing newline, no upper case, exactly 64 hex digits.
    """
    if not isinstance(value, str) or not value.startswith(PREFIX):
        raise InvalidDigest(value)
    hex_part = value[len(PREFIX) :]
    if not _HEX64.fullmatch(hex_part):
        raise InvalidDigest(value)
    return ALGORITHM, hex_part


def is_digest(value: object) -> bool:
    """True if `value` is a digest `parse_digest` accepts."""
    try:
        parse_digest(value)
    except InvalidDigest:
        return False
    return True


def digest_hex(digest: str) -> str:
    """The 64 hex digits of a valid digest (validated)."""
    return parse_digest(digest)[1]


def sha256_bytes(data: bytes) -> str:
    """The digest of `data`."""
    return PREFIX + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str) -> tuple[str, int]:
    """Hash a file: `(digest, size)`. Reads it once, in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return PREFIX + h.hexdigest(), size


def verify(path: Path | str, digest: str, size: int | None = None) -> None:
    """Raise `DigestMismatch` unless the file at `path` has this digest (and size, if given).

    The size is checked first, from `stat`, so a file of the wrong length is refused without
    reading it (docs/security.md rule 4); `actual` is then None and the sizes are on the error.
    """
    parse_digest(digest)
    if size is not None:
        actual_size = os.stat(path).st_size
        if actual_size != size:
            raise DigestMismatch(digest, None, expected_size=size, actual_size=actual_size)
    actual, actual_size = sha256_file(path)
    if actual != digest:
        raise DigestMismatch(digest, actual, actual_size=actual_size)


class HashingWriter:
    """A write-only binary file that passes every write through to `file` while hashing it.

    `digest` and `size` cover every byte written so far. `tell()` is the number of bytes
    written (what `tarfile` and `gzip` need). The underlying file is not closed by `close()`
    or by leaving a `with` block: whoever opened it closes it.

        with open(tmp, "wb") as f:
            w = HashingWriter(f)
            tarfile.open(fileobj=w, mode="w|")...
            digest, size = w.digest, w.size
    """

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._hash = hashlib.sha256()
        self.size = 0
        self.closed = False

    @property
    def digest(self) -> str:
        """`sha256:<hex>` of everything written so far."""
        return PREFIX + self._hash.hexdigest()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.closed:
            raise ValueError("write to a closed HashingWriter")
        view = memoryview(data).cast("B")
        written = self._file.write(view)
        if written is not None and written != len(view):
            raise OSError(f"short write: {written} of {len(view)} bytes")
        self._hash.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._file.flush()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        """Flush and stop accepting writes; the underlying file stays open."""
        if not self.closed:
            self.flush()
            self.closed = True

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
