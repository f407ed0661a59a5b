"""sources/named.py: --build-context values parsed, and names matched as buildx matches them."""

from __future__ import annotations

import pytest

from stepbuild.errors import UsageError
from stepbuild.sources.named import NamedContext, canonical_name, lookup, parse_all, parse_named

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("value", "expected"), [
    ("src=./dir", NamedContext("src", "path", "./dir")),
    ("Src=/abs/dir", NamedContext("src", "path", "/abs/dir")),
    ("alpine=docker-image://busybox:1", NamedContext("alpine", "image", "busybox:1")),
    ("docker.io/library/alpine:latest=docker-image://busybox",
     NamedContext("alpine", "image", "busybox")),
    ("base=oci-layout://./layout", NamedContext("base", "oci-layout", "oci-layout:./layout")),
    ("base=oci-layout:///l:v1", NamedContext("base", "oci-layout", "oci-layout:/l:v1")),
    (f"base=oci-layout:///l@{DIGEST}",
     NamedContext("base", "oci-layout", f"oci-layout:/l:{DIGEST}")),
    ("repo=https://example.com/r.git#main:sub",
     NamedContext("repo", "git", "https://example.com/r.git#main:sub")),
    ("repo=git@example.com:r.git", NamedContext("repo", "git", "git@example.com:r.git")),
    ("tarball=https://example.com/ctx.tar.gz",
     NamedContext("tarball", "url", "https://example.com/ctx.tar.gz")),
])
def test_forms(value: str, expected: NamedContext) -> None:
    assert parse_named(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("nodelimiter", "expected NAME=VALUE"),
    ("=dir", "expected NAME=VALUE"),
    ("name=", "expected NAME=VALUE"),
    ("name=ftp://host/x", "unknown form ftp://"),
    ("name=docker-image://", "no image"),
    ("name=oci-layout://", "no directory"),
    ("name=oci-layout:///l@sha256:short", "64 hex"),
    ("bad name=dir", "invalid --build-context name"),
])
def test_bad_values_are_usage_errors(value: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as raised:
        parse_named(value)
    assert raised.value.exit_code == 2


def test_a_name_given_twice_is_refused() -> None:
    with pytest.raises(UsageError, match="given twice"):
        parse_all(["alpine=a", "docker.io/library/alpine=b"])


@pytest.mark.parametrize("written", ["alpine", "ALPINE", "alpine:latest",
                                     "docker.io/library/alpine",
                                     "index.docker.io/library/alpine:latest"])
def test_from_names_match_their_familiar_form(written: str) -> None:
    contexts = parse_all(["alpine=docker-image://busybox:1"])
    assert canonical_name(written) == "alpine"
    assert lookup(contexts, written) == contexts["alpine"]


def test_other_names_do_not_match() -> None:
    contexts = parse_all(["alpine=docker-image://busybox:1"])
    assert lookup(contexts, "alpine:3") is None
    assert lookup(contexts, "example.com/alpine") is None
    assert lookup({}, "alpine") is None
