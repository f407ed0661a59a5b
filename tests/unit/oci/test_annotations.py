"""oci/annotations.py: `--annotation [TYPE:]KEY=VALUE` and `--label KEY=VALUE` parsing."""

from __future__ import annotations

import pytest

from stepbuild.errors import UsageError
from stepbuild.oci.annotations import Annotations, parse_annotations, parse_labels


def test_types_and_defaults() -> None:
    parsed = parse_annotations([
        "org.opencontainers.image.revision=abc",
        "manifest:a=1", "index:b=2", "manifest-descriptor:c=3",
        "com.example:with:colons=x",  # not a lower-case word before the colon: a key
        "manifest:a=again",  # the later one wins
        "index:empty=",  # an empty value is a value
        "manifest:url=https://example.com/x?y=z",  # the first = splits
    ])
    assert parsed == Annotations(
        manifest={"org.opencontainers.image.revision": "abc", "a": "again",
                  "com.example:with:colons": "x", "url": "https://example.com/x?y=z"},
        manifest_descriptor={"c": "3"}, index={"b": "2", "empty": ""})
    assert parsed.for_layouts()
    assert not Annotations(manifest={"a": "1"}).for_layouts()
    assert not parse_annotations([])


@pytest.mark.parametrize("bad", [
    "novalue", "=v", "manifest:=v", " k=v", "indx:k=v",  # a typo of a type is not a key
    "manifest[linux/amd64]:k=v", "foo[x]:k=v", "index-descriptor:k=v",
])
def test_bad_annotations_name_the_flag(bad: str) -> None:
    with pytest.raises(UsageError, match="--annotation"):
        parse_annotations([bad])


def test_labels() -> None:
    assert parse_labels(["a=1", "b=", "a=2", "c=x=y"]) == {"a": "2", "b": "", "c": "x=y"}
    for bad in ("a", "=1", " a=1"):
        with pytest.raises(UsageError, match="--label"):
            parse_labels([bad])
