"""The store defends itself (issue 11 item 14): layer dirs are checked against their blobs and
restored from them, a layer dir that is not the store's own is never followed, a store others
may write to is refused, a missing oci-layout is reported and written again.

Real files on tmp_path (as root): symlinks, owners and trusted.* xattrs matter here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from stepbuild.errors import StoreError
from stepbuild.layers.apply import commit_applied
from stepbuild.layers.tar import DIRTYPE
from stepbuild.oci.documents import MEDIA_TYPE_LAYER, ContainerConfig, ImageConfig
from stepbuild.store.gc import check
from stepbuild.store.repair import repair
from stepbuild.store.store import Store
from tests.badtars import ent, reg, tar
from tests.store_contract import blob_file, cache_record, damage

BASE = tar(ent(DIRTYPE, "etc/", mode=0o755), ent(DIRTYPE, "tmp/", mode=0o1777),
           reg("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"))
TOP = tar(reg("etc/hostname", b"box\n"), reg("tmp/note", b"hi"))  # lists neither dir


def diff_id_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def add_layer(store: Store, data: bytes, below: tuple[str, ...] = ()) -> str:
    path = store.tmp_file("test-")
    path.write_bytes(data)
    lowers = [store.layer_dir(d) for d in reversed(below)]
    commit_applied(store, path, diff_id_of(data), lowers, "test layer", "applied-")
    return diff_id_of(data)


def tag_image(store: Store, diff_ids: tuple[str, ...], name: str = "app:1") -> None:
    config = ImageConfig("amd64", "linux", ContainerConfig(), diff_ids=diff_ids)
    layers = [store.descriptor(d, MEDIA_TYPE_LAYER) for d in diff_ids]
    store.tag(name, store.put_image(config, layers))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def image(store: Store) -> tuple[str, str]:
    """A tagged image of two layers: (base, top)."""
    base = add_layer(store, BASE)
    top = add_layer(store, TOP, (base,))
    tag_image(store, (base, top))
    return base, top


# --- check --deep and --repair --------------------------------------------------------------


def test_deep_check_reports_a_tampered_layer_and_repair_restores_it(
        store: Store, image: tuple[str, str]) -> None:
    base, _ = image
    passwd = store.layer_dir(base) / "etc" / "passwd"
    passwd.write_bytes(b"root::0:0::/:/bin/sh\n")
    assert check(store) == []  # only --deep reads the layer dirs
    problems = check(store, deep=True)
    assert len(problems) == 1 and problems[0].startswith(f"layer {base}: differs from its blob")
    assert "etc/passwd: content differs" in problems[0]
    assert repair(store).done == [f"layer {base}: restored from its blob"]
    assert passwd.read_bytes() == b"root:x:0:0:root:/root:/bin/sh\n"
    assert check(store, deep=True) == []


def test_repair_rebuilds_a_layer_on_the_layers_below_it(
        store: Store, image: tuple[str, str]) -> None:
    """The dirs the top layer does not list (tmp/) take the base's attributes again, as at
    pull time: a rebuilt layer without its lowers would turn /tmp into 0755."""
    _, top = image
    (store.layer_dir(top) / "etc" / "hostname").write_bytes(b"evil\n")
    repairs = repair(store)
    assert repairs.done == [f"layer {top}: restored from its blob"] and repairs.failed == []
    assert (store.layer_dir(top) / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (store.layer_dir(top) / "etc" / "hostname").read_bytes() == b"box\n"


def test_a_symlinked_layer_dir_is_refused_reported_and_repaired(
        store: Store, image: tuple[str, str], tmp_path: Path) -> None:
    base, _ = image
    host = tmp_path / "host"
    (host / "diff" / "etc").mkdir(parents=True)
    (host / "diff" / "etc" / "passwd").write_text("host's own\n")
    top_dir = store.layer_dir(base).parent
    os.rename(top_dir, tmp_path / "moved")
    top_dir.symlink_to(host)
    with pytest.raises(StoreError) as caught:
        store.layer_dir(base)
    assert base in caught.value.message and "symlink" in caught.value.message
    assert "check --repair" in (caught.value.hint or "")
    with pytest.raises(StoreError):
        store.has_layer(base)  # a cache lookup fails loudly rather than use it
    assert any(p.startswith(f"layer {base}: ") and "symlink" in p for p in check(store))
    assert repair(store).done == [f"layer {base}: restored from its blob"]
    assert not store.layer_dir(base).parent.is_symlink()
    assert (host / "diff" / "etc" / "passwd").read_text() == "host's own\n"  # not followed
    assert check(store, deep=True) == []


def test_a_symlinked_diff_dir_is_refused(store: Store, image: tuple[str, str],
                                         tmp_path: Path) -> None:
    base, _ = image
    diff = store.layer_dir(base)
    os.rename(diff, tmp_path / "elsewhere")
    diff.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match="symlink"):
        store.layer_dir(base)


def test_a_layer_dir_of_another_owner_is_refused(store: Store, image: tuple[str, str]) -> None:
    base, _ = image
    os.chown(store.layer_dir(base).parent, 1000, 1000)
    with pytest.raises(StoreError, match="owned by uid 1000"):
        store.layer_dir(base)


def test_a_layer_dir_without_its_diff_is_restored(store: Store, image: tuple[str, str]) -> None:
    base, _ = image
    store.discard(store.layer_dir(base))
    assert check(store) == [f"layer {base}: no diff/ dir"]
    assert repair(store).done == [f"layer {base}: restored from its blob"]
    assert check(store, deep=True) == []


def test_a_layer_with_a_damaged_blob_cannot_be_restored(
        store: Store, image: tuple[str, str]) -> None:
    base, top = image
    damage(blob_file(store, base))
    repairs = repair(store)
    assert repairs.done == []
    assert len(repairs.failed) == 1
    assert repairs.failed[0].startswith(f"layer {base}: its blob is damaged")
    assert "pull, load or build" in repairs.failed[0]
    assert not store.layer_dir(base).parent.exists()
    assert not store.has_blob(base)  # removed, so that a pull fetches it again
    assert store.has_layer(top)  # the other layers stay


def test_a_layer_no_image_uses_is_removed_with_its_cache_records(store: Store) -> None:
    diff_id = add_layer(store, BASE)
    store.cache_records.put("0123456789abcdef0123456789abcdef", cache_record(diff_id))
    (store.layer_dir(diff_id) / "etc" / "passwd").write_text("evil\n")
    repairs = repair(store)
    assert repairs.done == [f"layer {diff_id}: no image uses it; removed it and the 1 cache"
                            " records naming it (those steps run again)"]
    assert not store.layer_dir(diff_id).exists()
    assert store.cache_records.get("0123456789abcdef0123456789abcdef") is None
    assert check(store, deep=True) == []


def test_repair_of_a_sound_store_does_nothing(store: Store, image: tuple[str, str]) -> None:
    repairs = repair(store)
    assert (repairs.done, repairs.failed) == ([], [])


# --- oci-layout -----------------------------------------------------------------------------


def test_a_missing_oci_layout_is_reported_and_written_by_repair(tmp_path: Path) -> None:
    Store(tmp_path / "store").layout.oci_layout.unlink()
    store = Store(tmp_path / "store")  # opening an existing store does not hide the damage
    assert check(store) == ["oci-layout: missing"]
    assert repair(store).done == ["oci-layout: written"]
    assert check(store) == []


def test_a_new_store_gets_its_oci_layout(tmp_path: Path) -> None:
    assert Store(tmp_path / "new").layout.oci_layout.is_file()


# --- who may write to the store -------------------------------------------------------------


@pytest.mark.parametrize("where", ["", "layers", "blobs/sha256", "tmp", "cache"])
def test_a_store_dir_writable_by_others_is_refused_with_the_fix(tmp_path: Path,
                                                                where: str) -> None:
    root = tmp_path / "store"
    Store(root)
    path = root / where if where else root
    os.chmod(path, 0o777)
    with pytest.raises(StoreError, match="writable by group or others") as caught:
        Store(root)
    assert caught.value.hint == f"chmod go-w {path}"
    os.chmod(path, 0o755)
    Store(root)  # the fix is enough


def test_a_store_root_of_another_user_is_refused_with_the_fix(tmp_path: Path) -> None:
    root = tmp_path / "store"
    Store(root)
    os.chown(root, 1000, 1000)
    with pytest.raises(StoreError, match="owned by uid 1000") as caught:
        Store(root)
    assert (caught.value.hint or "").startswith(f"chown {os.geteuid()} {root} ")


def test_a_symlinked_top_dir_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    Store(root)
    os.rename(root / "layers", tmp_path / "layers")
    (root / "layers").symlink_to(tmp_path / "layers")
    with pytest.raises(StoreError, match="symlink, not the store's own"):
        Store(root)


def test_a_symlinked_store_root_is_followed(tmp_path: Path) -> None:
    """An admin may put the store elsewhere and link /var/lib/stepbuild to it."""
    Store(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert check(Store(tmp_path / "link")) == []


def test_a_layer_that_cannot_be_rebuilt_is_reported_and_the_others_still_repaired(
        store: Store) -> None:
    """A blob apply refuses (an opaque marker at the layer root), committed by a build as its
    upper dir: repair says it could not rebuild it and goes on with the others."""
    odd = tar(reg(".wh..wh..opq"), reg("f", b"f"))
    base = add_layer(store, BASE)
    upper = store.tmp_dir("upper-")
    (upper / "f").write_bytes(b"f")
    tar_path = store.tmp_file("layer-")
    tar_path.write_bytes(odd)
    top = diff_id_of(odd)
    store.commit_layer(upper, top, tar_path)
    tag_image(store, (base, top))
    (store.layer_dir(base) / "etc" / "passwd").write_text("evil\n")
    (store.layer_dir(top) / "f").write_bytes(b"evil")
    repairs = repair(store)
    assert repairs.done == [f"layer {base}: restored from its blob"]
    assert len(repairs.failed) == 1
    assert repairs.failed[0].startswith(f"layer {top}: differs from its blob")
    assert "not rebuilt" in repairs.failed[0] and "opaque marker" in repairs.failed[0]


def test_a_layer_whose_blob_is_no_tar_is_reported_not_a_crash(store: Store) -> None:
    upper = store.tmp_dir("upper-")
    tar_path = store.tmp_file("layer-")
    tar_path.write_bytes(b"junk" * 200)
    diff_id = diff_id_of(b"junk" * 200)
    store.commit_layer(upper, diff_id, tar_path)
    [problem] = check(store, deep=True)
    assert problem.startswith(f"layer {diff_id}: its blob is not a layer tar")


# --- the overlay xattrs of a store's layer dirs ------------------------------------------


def _form(monkeypatch: pytest.MonkeyPatch, namespace: str) -> None:
    monkeypatch.setattr("stepbuild.store.store.overlay_xattr_namespace", lambda: namespace)


@pytest.mark.parametrize("first", ["trusted", "user"])
def test_the_first_layer_command_records_the_stores_overlay_form(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str) -> None:
    store = Store(tmp_path / "store")
    _form(monkeypatch, first)
    store.require_overlay_form()
    assert store.layout.overlay_xattrs.read_text() == f"{first}\n"
    store.require_overlay_form()  # the same form again: fine


def test_a_store_of_the_other_form_is_refused_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "store")
    _form(monkeypatch, "trusted")
    store.require_overlay_form()
    _form(monkeypatch, "user")
    with pytest.raises(StoreError) as refused:
        store.require_overlay_form()
    assert "\n" not in refused.value.message
    assert "root with CAP_SYS_ADMIN (trusted.overlay.* xattrs)" in refused.value.message
    assert "a user namespace or chroot isolation" in refused.value.message
    assert refused.value.hint == "give each its own store (--root or STEPBUILD_ROOT)"
    assert store.layout.overlay_xattrs.read_text() == "trusted\n"  # unchanged


def test_a_store_from_before_the_record_holds_roots_layers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "store")
    (store.layout.layers / ("a" * 64)).mkdir()  # a layer dir, made before the record existed
    _form(monkeypatch, "user")
    with pytest.raises(StoreError, match="keeps its layers for root with CAP_SYS_ADMIN"):
        store.require_overlay_form()
    assert store.layout.overlay_xattrs.read_text() == "trusted\n"
