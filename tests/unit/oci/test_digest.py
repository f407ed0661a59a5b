"""digest.py: strict parsing (digests become file names), hashing files and streams, verify."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepbuild.errors import DigestMismatch, InvalidDigest, StoreError
from stepbuild.oci.digest import (
    Digest,
    HashingWriter,
    digest_hex,
    is_digest,
    is_digest_hex,
    sha256_bytes,
    sha256_file,
    sha256_stream,
    verify,
)

HEX = "a" * 64
EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_digest_parses_to_a_frozen_hashable_value() -> None:
    digest = Digest.parse("sha256:" + HEX)
    assert (digest.algorithm, digest.hex) == ("sha256", HEX)
    assert str(digest) == "sha256:" + HEX
    assert digest == Digest("sha256", HEX) and len({digest, Digest.parse(str(digest))}) == 1
    with pytest.raises(AttributeError):
        digest.hex = "b" * 64  # type: ignore[misc]
    assert not hasattr(digest, "__dict__")  # slotted
    assert digest_hex(EMPTY) == EMPTY[7:]
    assert is_digest(EMPTY) and is_digest_hex(EMPTY[7:]) and not is_digest_hex(EMPTY)


def test_digest_made_from_parts_is_validated_too() -> None:
    with pytest.raises(InvalidDigest, match="sha512:"):
        Digest("sha512", HEX)
    with pytest.raises(InvalidDigest):
        Digest("sha256", HEX.upper())


@pytest.mark.parametrize(
    "value",
    [
        "",
        "sha256:",
        HEX,
        "sha256:" + HEX[:-1],
        "sha256:" + HEX + "a",
        "sha256:" + "A" * 64,
        "SHA256:" + HEX,
        "sha512:" + "a" * 128,
        "sha256+b64:" + HEX,
        "sha256:" + HEX + "\n",
        "sha256: " + HEX[1:],
        "sha256:" + "g" * 64,
        "sha256:../" + HEX[3:],
        "sha256:" + HEX[:63] + "/",
        "sha256:" + HEX[:63] + "\0",
        "sha256:" + "٣" * 64,
        None,
        42,
        b"sha256:" + HEX.encode(),
    ],
)
def test_parse_digest_refuses(value: object) -> None:
    with pytest.raises(InvalidDigest) as err:
        Digest.parse(value)
    assert err.value.value == value
    assert isinstance(err.value, StoreError) and isinstance(err.value, ValueError)
    assert not is_digest(value)


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"")
    assert sha256_file(path) == (EMPTY, 0)
    data = bytes(range(256)) * 4097 + b"x"  # crosses the 1 MiB chunk boundary
    path.write_bytes(data)
    assert sha256_file(path) == ("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    assert sha256_bytes(data) == sha256_file(path)[0]
    assert sha256_stream(io.BytesIO(data)) == sha256_file(path)


def test_verify(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    digest = sha256_bytes(b"hello")
    verify(path, digest)
    verify(path, digest, 5)
    with pytest.raises(DigestMismatch) as size_err:
        verify(path, digest, 6)
    assert size_err.value.actual is None
    assert (size_err.value.expected_size, size_err.value.actual_size) == (6, 5)
    path.write_bytes(b"jello")
    with pytest.raises(DigestMismatch) as err:
        verify(path, digest, 5)
    assert (err.value.expected, err.value.actual) == (digest, sha256_bytes(b"jello"))
    with pytest.raises(InvalidDigest):
        verify(path, "md5:abc")


def test_verify_on_a_fake_filesystem(fs: object) -> None:
    Path("/blob").write_bytes(b"abc")
    verify("/blob", sha256_bytes(b"abc"), 3)


def test_hashing_writer_under_tarfile_and_gzip(tmp_path: Path) -> None:
    for mode in ("w", "w|"):
        path = tmp_path / f"layer{mode}.tar"
        with open(path, "wb") as f:
            writer = HashingWriter(f)
            with tarfile.open(fileobj=writer, mode=mode) as tar:  # type: ignore[call-overload]
                info = tarfile.TarInfo("etc/hostname")
                info.size = 4
                tar.addfile(info, io.BytesIO(b"box\n"))
            assert not f.closed  # the writer never closes what it was given
        assert (writer.digest, writer.size) == sha256_file(path)
        assert writer.tell() == writer.size
    path = tmp_path / "layer.tar.gz"
    with (
        open(path, "wb") as f,
        HashingWriter(f) as writer,
        gzip.GzipFile(fileobj=writer, mode="wb", mtime=0) as gz,
    ):
        gz.write(b"data" * 1000)
    assert (writer.digest, writer.size) == sha256_file(path)
    with pytest.raises(ValueError):
        writer.write(b"late")


@given(st.lists(st.binary(max_size=300), max_size=8))
def test_hashing_writer_equals_hashlib(chunks: list[bytes]) -> None:
    sink = io.BytesIO()
    writer = HashingWriter(sink)
    for chunk in chunks:
        assert writer.write(memoryview(chunk)) == len(chunk)
    data = b"".join(chunks)
    assert sink.getvalue() == data
    assert (writer.digest, writer.size) == (sha256_bytes(data), len(data))
