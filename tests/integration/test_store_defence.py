"""The store defends itself (issue 11 item 14), through the real CLI: a tampered layer dir is
found by `check --deep` and restored by `check --repair`, after which builds copy the right
bytes; a layer dir that is a symlink to a host dir is refused by a build, never used as an
overlay lower; a store others may write to is refused; a missing oci-layout is reported.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from stepbuild.store.store import Store
from tests.integration.builds import (
    EPOCH,
    Stepbuild,
    assert_clear_error,
    store_with_base,
    write_context,
)

EVIL = "root::0:0:evil:/root:/bin/sh\n"


@pytest.fixture
def sb(tmp_path: Path) -> Stepbuild:
    return store_with_base(tmp_path, "store", *EPOCH)


def base_layer(sb: Stepbuild) -> tuple[str, Path]:
    """The diff_id and `layers/<hex>/diff` of the base image's one layer (busybox's /etc)."""
    store = Store(sb.root)
    desc = store.resolve("base")
    assert desc is not None
    (diff_id,) = store.config(store.manifest(desc)).diff_ids
    return diff_id, store.layer_dir(diff_id)


def copy_passwd(sb: Stepbuild, tmp_path: Path) -> str:
    """Build an image that copies the base's /etc/passwd in a new layer; return the copy."""
    context = write_context(tmp_path / "app", "FROM base\nRUN cp /etc/passwd /copied\n")
    sb.build(context, "-q", "-t", "app", *EPOCH)
    return sb.run("app", "cat", "/copied")


def test_a_fresh_store_passes_the_deep_check(sb: Stepbuild, tmp_path: Path) -> None:
    """Built layer dirs (upper dirs renamed into the store) agree with their blobs."""
    copy_passwd(sb, tmp_path)
    result = sb("check", "--deep")
    assert result.stdout.strip() == "store is consistent"


def test_a_tampered_layer_is_found_repaired_and_builds_copy_the_right_bytes(
        sb: Stepbuild, tmp_path: Path) -> None:
    diff_id, diff = base_layer(sb)
    passwd = (diff / "etc" / "passwd").read_text()
    (diff / "etc" / "passwd").write_text(EVIL)
    assert sb("check").returncode == 0  # the plain check does not read layer dirs
    found = sb("check", "--deep", check=False)
    assert found.returncode == 1
    assert f"layer {diff_id}: differs from its blob" in found.stdout
    assert "etc/passwd: content differs" in found.stdout
    assert "stepbuild check --repair" in found.stdout
    repaired = sb("check", "--repair")
    assert f"repaired: layer {diff_id}: restored from its blob" in repaired.stdout
    assert repaired.stdout.strip().endswith("store is consistent")
    assert (diff / "etc" / "passwd").read_text() == passwd
    assert copy_passwd(sb, tmp_path) == passwd


def test_a_layer_dir_symlinked_to_a_host_dir_is_refused_by_a_build(
        sb: Stepbuild, tmp_path: Path) -> None:
    diff_id, diff = base_layer(sb)
    passwd = (diff / "etc" / "passwd").read_text()
    host = tmp_path / "host"
    (host / "diff" / "etc").mkdir(parents=True)
    (host / "diff" / "etc" / "passwd").write_text("host secret\n")
    os.rename(diff.parent, tmp_path / "moved-away")
    diff.parent.symlink_to(host)
    context = write_context(tmp_path / "app", "FROM base\nRUN cat /etc/passwd\n")
    result = sb.build(context, "-t", "app", *EPOCH, check=False)
    assert_clear_error(result, 1, "stepbuild: error:", f"layer {diff_id}", "symlink",
                       "stepbuild check --repair")
    assert "host secret" not in result.stderr + result.stdout
    found = sb("check", check=False)
    assert found.returncode == 1 and "symlink" in found.stdout
    sb("check", "--repair")
    assert not diff.parent.is_symlink()
    assert (host / "diff" / "etc" / "passwd").read_text() == "host secret\n"  # untouched
    assert copy_passwd(sb, tmp_path) == passwd


def test_a_store_writable_by_others_is_refused_with_the_fix(sb: Stepbuild) -> None:
    os.chmod(sb.root / "layers", 0o777)
    result = sb("images", check=False)
    assert_clear_error(result, 1, "writable by group or others",
                       f"chmod go-w {sb.root / 'layers'}")
    os.chmod(sb.root / "layers", 0o700)
    assert "base" in sb("images").stdout


def test_a_missing_oci_layout_is_reported_and_repaired(sb: Stepbuild) -> None:
    (sb.root / "oci-layout").unlink()
    found = sb("check", check=False)
    assert found.returncode == 1 and "oci-layout: missing" in found.stdout
    assert "repaired: oci-layout: written" in sb("check", "--repair").stdout
    assert (sb.root / "oci-layout").is_file()


def test_a_no_op_rebuild_is_not_replayed_over_a_store_others_may_write_to(
        sb: Stepbuild, tmp_path: Path) -> None:
    """The whole-build fingerprint's replay (cli/noop.py) skips opening the store: it must
    see the damage too, and leave it to the full build to refuse."""
    context = write_context(tmp_path / "app", "FROM base\nRUN echo r > /r\n")
    time.sleep(2.1)  # past the fingerprint's racy window (test_noop_fingerprint.SETTLE)
    sb.build(context, "-v", "-t", "app")
    assert "nothing changed since the last build" in sb.build(context, "-v", "-t", "app").stderr
    os.chmod(sb.root, 0o777)
    assert_clear_error(sb.build(context, "-v", "-t", "app", check=False), 1,
                       "writable by group or others", f"chmod go-w {sb.root}")


def test_a_roots_store_is_refused_by_a_build_in_a_user_namespace(sb: Stepbuild,
                                                                 tmp_path: Path) -> None:
    """Root's layer dirs keep overlay's opaque marks in trusted.* xattrs, which an overlay
    in a user namespace (userxattr) does not read: one line, nothing built."""
    context = write_context(tmp_path / "ctx", "FROM base\nRUN true\n")
    layers = sorted(os.listdir(Store(sb.root).layout.layers))
    result = sb.build(context, "--isolation=userns", check=False)
    assert_clear_error(result, 1, "keeps its layers for root with CAP_SYS_ADMIN",
                       "--root or STEPBUILD_ROOT")
    assert len(result.stderr.splitlines()) == 2  # the error and its hint, before any step
    assert sorted(os.listdir(Store(sb.root).layout.layers)) == layers
    assert (sb.root / "overlay-xattrs").read_text() == "trusted\n"
