"""sha256 digests: parse, compute, verify.

A digest names content: `sha256:` + 64 lower-case hex digits, the only algorithm the store
accepts. `Digest` is the one definition of that form (in the spirit of go-containerregistry's
`v1.Hash`): every check of a digest string in stepbuild goes through `Digest.parse`, directly
or via `is_digest`/`digest_hex`. Digests become file names (`blobs/sha256/<hex>`,
`layers/<hex>`), so parsing is strict: anything else (other algorithms, upper case, `..`, `/`,
NUL) is refused before it gets near a path. Descriptors and JSON documents keep digests as
plain strings; they are parsed where they come in. Vocabulary: a *digest* names a blob as
stored; a *diff_id* is the digest of an uncompressed layer tar. Both have this same form.

No store logic here; `store/store.py` decides where files live.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from stepbuild.errors import DigestMismatch, InvalidDigest

ALGORITHM = "sha256"
PREFIX = "sha256:"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Digest:
    """A valid digest: `algorithm` ("sha256") and `hex` (64 lower-case hex digits).

    Made by `parse` (or directly), refusing anything else with `InvalidDigest`; `str()`
    gives the `sha256:<hex>` form back. Hashable, so it can key sets and dicts.
    """

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        if self.algorithm != ALGORITHM or not is_digest_hex(self.hex):
            raise InvalidDigest(f"{self.algorithm}:{self.hex}")

    @classmethod
    def parse(cls, text: object) -> Digest:
        """`sha256:<hex>` as a Digest; `InvalidDigest` (naming `text`) for anything else."""
        if not isinstance(text, str) or not text.startswith(PREFIX):
            raise InvalidDigest(text)
        return cls(ALGORITHM, text[len(PREFIX) :])

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


class _Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def is_digest(value: object) -> bool:
    """True if `value` is a digest string `Digest.parse` accepts."""
    try:
        Digest.parse(value)
    except InvalidDigest:
        return False
    return True


def is_digest_hex(value: object) -> bool:
    """True if `value` is the hex part of a digest (also: a valid blob or layer file name).

    `fullmatch` on a str: no trailing newline, no upper case, exactly 64 hex digits.
    """
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def digest_hex(digest: str) -> str:
    """The 64 hex digits of a valid digest (validated)."""
    return Digest.parse(digest).hex


def sha256_bytes(data: bytes) -> str:
    """The digest of `data`."""
    return PREFIX + hashlib.sha256(data).hexdigest()


def sha256_stream(stream: _Reader) -> tuple[str, int]:
    """Hash a stream to its end: `(digest, size)`. Reads it in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    while chunk := stream.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
    return PREFIX + h.hexdigest(), size


def sha256_file(path: Path | str) -> tuple[str, int]:
    """Hash a file: `(digest, size)`. Reads it once, in 1 MiB chunks."""
    with open(path, "rb") as f:
        return sha256_stream(f)


def verify(path: Path | str, digest: str, size: int | None = None) -> None:
    """Raise `DigestMismatch` unless the file at `path` has this digest (and size, if given).

    The size is checked first, from `stat`, so a file of the wrong length is refused without
    reading it (docs/security.md rule 4); `actual` is then None and the sizes are on the error.
    """
    Digest.parse(digest)
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
