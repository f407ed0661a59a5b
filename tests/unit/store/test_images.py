"""store/images.py: which image manifest a name means for a platform (issue 15)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stepbuild.errors import ImageNotFound, PlatformNotFound
from stepbuild.oci.documents import MEDIA_TYPE_INDEX, MEDIA_TYPE_LAYER, ContainerConfig, ImageConfig
from stepbuild.oci.platform import Platform
from stepbuild.store.images import image_for, index_platforms, resolve_image, summary
from stepbuild.store.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from store_contract import commit  # noqa: E402

HOST = Platform.host()
OTHER = Platform.of("linux", "s390x" if HOST.architecture != "s390x" else "arm64")


def _image(store: Store, content: bytes, platform: Platform):
    diff_id = commit(store, content)
    config = ImageConfig(platform.architecture, platform.os, ContainerConfig(cmd=("true",)),
                         diff_ids=(diff_id,), variant=platform.written_variant)
    return store.put_image(config, [store.descriptor(diff_id, MEDIA_TYPE_LAYER)])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def test_an_index_gives_the_hosts_entry_or_the_one_asked(store: Store) -> None:
    here, there = _image(store, b"here", HOST), _image(store, b"there", OTHER)
    index = store.put_index([here, there])
    store.tag("multi", index)
    assert image_for(store, "multi").digest == here.digest
    assert image_for(store, "multi", OTHER).digest == there.digest
    assert image_for(store, "multi", OTHER).platform == there.platform
    assert resolve_image(store, "multi").media_type == MEDIA_TYPE_INDEX


def test_an_index_without_the_platform_lists_what_it_has(store: Store) -> None:
    store.tag("other-only", store.put_index([_image(store, b"there", OTHER)]))
    with pytest.raises(PlatformNotFound) as info:
        image_for(store, "other-only")
    assert info.value.available == (str(OTHER),)
    assert info.value.wanted == str(HOST)
    assert str(OTHER) in info.value.render() and "--platform" in info.value.render()


def test_a_single_image_is_itself_and_checked_when_a_platform_is_asked(store: Store) -> None:
    store.tag("one", _image(store, b"one", OTHER))
    assert image_for(store, "one").digest == image_for(store, "one", OTHER).digest
    with pytest.raises(PlatformNotFound) as info:
        image_for(store, "one", HOST)
    assert info.value.available == (str(OTHER),)


def test_arm_variants_are_matched_in_normal_form(store: Store) -> None:
    v7 = _image(store, b"v7", Platform.of("linux", "arm", "v7"))
    v6 = _image(store, b"v6", Platform.of("linux", "arm", "v6"))
    store.tag("arm", store.put_index([v6, v7]))
    assert image_for(store, "arm", Platform.of("linux", "arm")).digest == v7.digest  # v7 implied
    assert image_for(store, "arm", Platform.of("linux", "armel")).digest == v6.digest
    assert index_platforms(store.index(resolve_image(store, "arm"))) == ("linux/arm/v6",
                                                                       "linux/arm/v7")


def test_an_untagged_index_resolves_by_digest(store: Store) -> None:
    index = store.put_index([_image(store, b"here", HOST)])
    assert store.resolve(index.digest) is None  # the store alone knows no untagged index
    assert resolve_image(store, index.digest) == index
    with pytest.raises(ImageNotFound):
        resolve_image(store, "sha256:" + "0" * 64)


def test_summary_counts_shared_layers_once(store: Store) -> None:
    here, there = _image(store, b"shared", HOST), _image(store, b"shared", OTHER)
    index = store.put_index([here, there])
    size, platforms = summary(store, index)
    assert size == summary(store, here)[0]  # the same layer: counted once
    assert platforms == (str(HOST), str(OTHER))
    assert summary(store, there)[1] == (str(OTHER),)
