"""local_names.py: an image is found by the name as written, else by the reference's familiar
or full form (what a pull tags it with)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stepbuild.distribution.local_names import find_local, local_name, other_local_names
from stepbuild.distribution.reference import parse_reference
from stepbuild.errors import ImageNotFound
from stepbuild.store.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from store_contract import build_image  # noqa: E402


def test_other_names_are_the_familiar_and_the_full_form() -> None:
    assert other_local_names("busybox") == ["busybox:latest", "docker.io/library/busybox:latest"]
    assert other_local_names("docker.io/library/busybox:latest") == ["busybox:latest"]
    assert other_local_names("127.0.0.1:5000/app:1") == []
    assert other_local_names("Not Valid") == []  # no reference: no other names


def test_a_pulled_image_is_tagged_with_the_familiar_form() -> None:
    assert local_name(parse_reference("docker.io/library/busybox")) == "busybox:latest"
    assert local_name(parse_reference("127.0.0.1:5000/app:1")) == "127.0.0.1:5000/app:1"


def test_find_local_tries_the_name_as_written_first(tmp_path: Path) -> None:
    store = Store(tmp_path)
    pulled, built = build_image(store, b"pulled"), build_image(store, b"built")
    store.tag("busybox:latest", pulled)
    assert find_local(store, "busybox").digest == pulled.digest
    store.tag("busybox", built)
    assert find_local(store, "busybox").digest == built.digest


def test_find_local_of_an_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFound, match="busybox"):
        find_local(Store(tmp_path), "busybox")
