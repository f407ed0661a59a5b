"""Image references: Docker's normalisation (distribution/reference normalize_test.go and
reference_test.go cases) and validation."""

from __future__ import annotations

import pytest

from stepbuild.distribution.reference import Reference, parse_reference
from stepbuild.errors import InvalidReference, UsageError

D = "sha256:" + "ab" * 32
HEX64 = "cd" * 32

# text → (registry, repository, tag, digest)
VALID = [
    ("busybox", ("docker.io", "library/busybox", "latest", None)),
    ("busybox:1.36", ("docker.io", "library/busybox", "1.36", None)),
    ("library/busybox", ("docker.io", "library/busybox", "latest", None)),
    ("docker.io/busybox", ("docker.io", "library/busybox", "latest", None)),
    ("docker.io/library/busybox", ("docker.io", "library/busybox", "latest", None)),
    ("index.docker.io/busybox", ("docker.io", "library/busybox", "latest", None)),
    ("index.docker.io/library/busybox:musl", ("docker.io", "library/busybox", "musl", None)),
    ("foo/bar", ("docker.io", "foo/bar", "latest", None)),
    ("foo/bar/baz", ("docker.io", "foo/bar/baz", "latest", None)),
    ("docker.io/foo/bar", ("docker.io", "foo/bar", "latest", None)),
    ("localhost/foo", ("localhost", "foo", "latest", None)),
    ("localhost:5000/foo/bar:tag", ("localhost:5000", "foo/bar", "tag", None)),
    ("127.0.0.1:5000/foo", ("127.0.0.1:5000", "foo", "latest", None)),
    ("[::1]:5000/foo", ("[::1]:5000", "foo", "latest", None)),
    ("[2001:db8::1]/foo:v1", ("[2001:db8::1]", "foo", "v1", None)),
    ("example.com/foo", ("example.com", "foo", "latest", None)),
    ("example.com:443/a/b/c", ("example.com:443", "a/b/c", "latest", None)),
    ("Example.com/foo", ("Example.com", "foo", "latest", None)),
    ("Foo/bar", ("Foo", "bar", "latest", None)),  # upper case: a host, as in Docker
    ("ghcr.io/org/app:1.0", ("ghcr.io", "org/app", "1.0", None)),
    ("foo:5000", ("docker.io", "library/foo", "5000", None)),  # no slash: a tag, not a port
    ("localhost:5000", ("docker.io", "library/localhost", "5000", None)),
    (f"foo@{D}", ("docker.io", "library/foo", None, D)),
    (f"foo:v2@{D}", ("docker.io", "library/foo", "v2", D)),
    (f"localhost:5000/foo@{D}", ("localhost:5000", "foo", None, D)),
    ("foo/a.b-c_d__e---f", ("docker.io", "foo/a.b-c_d__e---f", "latest", None)),
    ("foo:" + "T" * 128, ("docker.io", "library/foo", "T" * 128, None)),
    ("foo:_under.score-ok", ("docker.io", "library/foo", "_under.score-ok", None)),
    ("foo/" + HEX64, ("docker.io", "foo/" + HEX64, "latest", None)),  # only a bare id is refused
]

INVALID = [
    "",
    "FOO",
    "foo/Bar",
    "-foo",
    "foo-",
    "foo/",
    "/foo",
    "foo//bar",
    "a..b",
    "a___b",
    "foo:",
    "foo:" + "t" * 129,
    "foo:-tag",
    "foo:bar:baz",
    "foo@sha256:abc",
    "foo@sha256:" + "AB" * 32,
    "foo@sha512:" + "ab" * 64,
    "foo@",
    HEX64,
    "::1/foo",
    "exa_mple.com/foo",
    "a.b-c_d__e---f/g",  # "." makes the first part a host, and hosts have no "_"
    "foo bar",
    "f\u00f6o",
    "foo:t\u00e4g",
    "localhost:5000/" + "a" * 250,
]


@pytest.mark.parametrize(("text", "parts"), VALID, ids=[v[0][:40] for v in VALID])
def test_parse_normalises_like_docker(text: str, parts: tuple[object, ...]) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == parts
    assert parse_reference(str(ref)) == ref  # str() is a full, re-parseable form


@pytest.mark.parametrize("text", INVALID, ids=[t[:30] or "empty" for t in INVALID])
def test_invalid_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    assert info.value.value == text
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "full", "familiar"),
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("foo/bar:1", "docker.io/foo/bar:1", "foo/bar:1"),
        ("library/foo/bar", "docker.io/library/foo/bar:latest", "library/foo/bar:latest"),
        ("localhost:5000/x:y", "localhost:5000/x:y", "localhost:5000/x:y"),
        (f"busybox@{D}", f"docker.io/library/busybox@{D}", f"busybox@{D}"),
        (f"a:b@{D}", f"docker.io/library/a:b@{D}", f"a:b@{D}"),
    ],
)
def test_str_and_familiar(text: str, full: str, familiar: str) -> None:
    ref = parse_reference(text)
    assert str(ref) == full
    assert ref.familiar() == familiar


def test_identifier_prefers_the_digest() -> None:
    assert parse_reference("foo:1").identifier == "1"
    assert parse_reference(f"foo:1@{D}").identifier == D
    assert parse_reference(f"foo@{D}").identifier == D


def test_name_and_replacements() -> None:
    ref = parse_reference("localhost:5000/app:1")
    assert ref.name == "localhost:5000/app"
    assert str(ref.with_tag("2")) == "localhost:5000/app:2"
    assert str(ref.with_digest(D)) == f"localhost:5000/app:1@{D}"
    assert ref.with_digest(D).with_tag("3").digest is None


def test_default_tag_can_be_required() -> None:
    with pytest.raises(InvalidReference, match="tag or a digest"):
        parse_reference("busybox", default_tag=None)
    assert parse_reference(f"busybox@{D}", default_tag=None).tag is None


def test_constructed_references_are_validated() -> None:
    assert str(Reference("localhost:5000", "a/b", "t")) == "localhost:5000/a/b:t"
    for parts in [("local host", "a", "t", None), ("h", "A", "t", None), ("h", "a", None, None),
                  ("h", "a", "t", "sha256:xyz"), ("h", "a", "bad tag", None)]:
        with pytest.raises(InvalidReference):
            Reference(*parts)


def test_references_are_values() -> None:
    assert parse_reference("busybox") == parse_reference("docker.io/library/busybox:latest")
    assert len({parse_reference("busybox"), parse_reference("index.docker.io/busybox")}) == 1
    with pytest.raises(AttributeError):
        parse_reference("busybox").tag = "x"  # type: ignore[misc]


def test_messages_say_what_is_wrong() -> None:
    cases = {"FOO": "lower case", "foo@sha512:" + "ab" * 64: "only sha256",
             "foo:-x": "invalid tag", HEX64: "hexadecimal"}
    for text, words in cases.items():
        with pytest.raises(InvalidReference, match=words):
            parse_reference(text)


def test_helpers_for_the_registry_client() -> None:
    from stepbuild.distribution.reference import (
        check_identifier,
        check_repository,
        valid_registry_host,
    )

    assert valid_registry_host("localhost:5000") and valid_registry_host("[::1]:5000")
    assert not valid_registry_host("http://localhost") and not valid_registry_host("a/b")
    assert check_repository("library/busybox") == "library/busybox"
    assert check_identifier("v1.0") == "v1.0" and check_identifier(D) == D
    for bad in ("../x", "a?b=c", "A", "", "a/"):
        with pytest.raises(InvalidReference):
            check_repository(bad)
    for bad in ("", "../x", "a/b", "sha256:xyz", "-v"):
        with pytest.raises(InvalidReference):
            check_identifier(bad)
