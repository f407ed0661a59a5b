"""pull.py's `base_image` (FROM a registry reference) where no registry is contacted: the
pull policies answered from the store alone, and the errors before any pull."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stepbuild.distribution.pull import base_image
from stepbuild.errors import StepbuildError, UsageError
from stepbuild.store.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from store_contract import build_image  # noqa: E402


def test_an_unknown_policy_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown pull policy 'sometimes'"):
        base_image(Store(tmp_path), "busybox", "sometimes", found=False)


def test_a_name_that_is_no_reference_is_left_to_the_store(tmp_path: Path) -> None:
    assert base_image(Store(tmp_path), "Not Valid", "always", found=False) is None


@pytest.mark.parametrize("policy", ["missing", "never"])
def test_the_normalised_name_is_found_without_pulling(tmp_path: Path, policy: str) -> None:
    store = Store(tmp_path)
    image = build_image(store)
    store.tag("busybox:latest", image)
    assert base_image(store, "busybox", policy, found=False) == image.digest


@pytest.mark.parametrize("policy", ["missing", "never"])
def test_what_the_store_resolved_is_kept(tmp_path: Path, policy: str) -> None:
    assert base_image(Store(tmp_path), "busybox", policy, found=True) is None


def test_never_without_the_image_names_the_base(tmp_path: Path) -> None:
    with pytest.raises(StepbuildError, match="'busybox' not found in the local store and "
                       "--pull=never forbids pulling it") as caught:
        base_image(Store(tmp_path), "busybox", "never", found=False)
    assert "stepbuild pull docker.io/library/busybox:latest" in (caught.value.hint or "")
