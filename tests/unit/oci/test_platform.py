"""oci/platform.py: parsing, normal forms, the ARGs and index selection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from stepbuild.errors import UsageError
from stepbuild.oci.platform import Platform, parse_platform, parse_platforms, select


@pytest.mark.parametrize(("text", "normal", "short"), [
    ("linux/amd64", ("linux", "amd64", "v1"), "linux/amd64"),
    ("linux/x86_64", ("linux", "amd64", "v1"), "linux/amd64"),
    ("arm64", ("linux", "arm64", "v8"), "linux/arm64"),
    ("linux/aarch64", ("linux", "arm64", "v8"), "linux/arm64"),
    ("linux/arm64/v8", ("linux", "arm64", "v8"), "linux/arm64"),
    ("LINUX/ARM/V7", ("linux", "arm", "v7"), "linux/arm/v7"),
    ("linux/armhf", ("linux", "arm", "v7"), "linux/arm/v7"),
    ("linux/arm/v6", ("linux", "arm", "v6"), "linux/arm/v6"),
    ("linux/s390x", ("linux", "s390x", ""), "linux/s390x"),
])
def test_normal_and_short_forms(text: str, normal: tuple[str, str, str], short: str) -> None:
    platform = parse_platform(text)
    assert platform is not None
    assert (platform.os, platform.architecture, platform.variant) == normal
    assert str(platform) == short
    assert parse_platform(short) == platform  # the short form reads back as the same


@pytest.mark.parametrize("text", ["", "linux/", "/amd64", "bogus/amd64", "a/b/c/d", "bogus"])
def test_not_platforms(text: str) -> None:
    assert parse_platform(text) is None


def test_a_bare_os_takes_this_machines_architecture() -> None:
    assert parse_platform("linux") == Platform.host()


def test_oci_objects_leave_default_variants_out() -> None:
    assert Platform.of("linux", "arm64").to_oci() == {"architecture": "arm64", "os": "linux"}
    assert Platform.of("linux", "arm", "v7").to_oci() == {"architecture": "arm", "os": "linux",
                                                           "variant": "v7"}
    assert Platform.from_oci({"os": "linux", "architecture": "arm64", "variant": "v8"}) == \
        Platform.of("linux", "arm64")


def test_build_args_as_buildkit_sets_them() -> None:
    assert Platform.of("linux", "arm", "v7").build_args("TARGET") == {
        "TARGETPLATFORM": "linux/arm/v7", "TARGETOS": "linux", "TARGETARCH": "arm",
        "TARGETVARIANT": "v7"}
    assert Platform.of("linux", "arm64").build_args("BUILD")["BUILDVARIANT"] == ""


def test_parse_platforms_splits_commas_keeps_order_drops_repeats() -> None:
    assert [str(p) for p in parse_platforms(["linux/arm64,linux/amd64", "aarch64"])] == [
        "linux/arm64", "linux/amd64"]
    with pytest.raises(UsageError, match="--platform 'linux/'"):
        parse_platforms(["linux/amd64,linux/"])


@dataclass
class Entry:
    name: str
    platform: dict[str, Any] | None


def test_select_compares_normal_forms_first_entry_wins() -> None:
    entries = [Entry("none", None), Entry("v6", {"os": "linux", "architecture": "arm",
                                                 "variant": "v6"}),
               Entry("arm", {"os": "linux", "architecture": "arm"}),
               Entry("v7", {"os": "linux", "architecture": "arm", "variant": "v7"}),
               Entry("arm64", {"os": "linux", "architecture": "arm64", "variant": "v8"})]
    assert select(entries, Platform.of("linux", "arm", "v7")).name == "arm"  # arm is arm/v7
    assert select(entries, Platform.of("linux", "arm", "v6")).name == "v6"
    assert select(entries, Platform.of("linux", "aarch64")).name == "arm64"
    assert select(entries, Platform.of("linux", "amd64")) is None
