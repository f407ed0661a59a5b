"""sandbox/fuse_overlay.py's option string and what it needs, and overlay_choice.py's
decision: the pure parts of the fuse-overlayfs fallback (the program itself runs in
tests/integration/test_rootless.py, under a real refusal of the kernel's overlay)."""

from __future__ import annotations

import errno

import pytest

from stepbuild.errors import RootlessError
from stepbuild.sandbox import fuse_overlay
from stepbuild.sandbox.overlay_choice import FUSE, KERNEL, OverlayChoice, choose


def test_the_option_string_names_the_lowers_top_first_then_upper_and_work() -> None:
    assert fuse_overlay.options(["/s/l/b/diff", "/s/l/a/diff"], "/s/t/up", "/s/t/work") == (
        "lowerdir=/s/l/b/diff:/s/l/a/diff,upperdir=/s/t/up,workdir=/s/t/work")


def test_without_an_upper_dir_the_option_string_has_only_the_lowers() -> None:
    assert fuse_overlay.options(["/b", "/a"], None, None) == "lowerdir=/b:/a"


@pytest.mark.parametrize("bad", ["/s/a,b", "/s/a:b"])
def test_a_dir_with_a_separator_in_its_name_is_refused_not_split(bad: str) -> None:
    with pytest.raises(RootlessError, match="has a ',' or ':'"):
        fuse_overlay.options(["/ok", bad], "/up", "/work")
    with pytest.raises(RootlessError):
        fuse_overlay.options(["/ok"], bad, "/work")


def test_a_missing_program_is_named_with_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    reason = fuse_overlay.missing()
    assert reason is not None
    assert "fuse-overlayfs is not installed" in reason
    assert "apt-get install fuse-overlayfs" in reason


def test_a_missing_device_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fuse_overlay, "FUSE_DEVICE", "/dev/no-such-fuse")
    reason = fuse_overlay.missing()
    assert reason is not None and reason.startswith("/dev/no-such-fuse is missing")


def test_here_everything_fuse_overlayfs_needs_is_present() -> None:
    # scripts/setup.sh installs the program; the kernel has /dev/fuse (root may use it)
    assert fuse_overlay.missing() is None


@pytest.mark.parametrize(("refused", "name"), [(errno.EPERM, "EPERM"),
                                               (errno.EINVAL, "EINVAL"),
                                               (errno.ENODEV, "ENODEV")])
def test_a_refusal_with_fuse_overlayfs_at_hand_chooses_it(refused: int, name: str) -> None:
    choice = choose(refused, None)
    assert choice == OverlayChoice(FUSE, name)
    assert choice.describe() == (
        f"overlay: fuse-overlayfs (the kernel refused overlay in a user namespace: {name})")


def test_a_refusal_without_fuse_overlayfs_is_one_error_naming_both() -> None:
    with pytest.raises(RootlessError) as caught:
        choose(errno.EPERM, "fuse-overlayfs is not installed (not found on PATH)")
    message = caught.value.message
    assert "kernel refused an overlay mount in the user namespace (EPERM)" in message
    assert message.endswith("cannot run: fuse-overlayfs is not installed (not found on PATH)")
    assert "\n" not in message


def test_the_kernels_overlay_is_described_plainly() -> None:
    assert OverlayChoice(KERNEL).describe() == "overlay: kernel"
