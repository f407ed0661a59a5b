"""cli/platform_select.py: the one-platform --platform flag (issue 15)."""

from __future__ import annotations

import argparse

import pytest

from stepbuild.cli.platform_select import add_argument, chosen
from stepbuild.errors import UsageError
from stepbuild.oci.platform import Platform


def _options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_argument(parser, "the platform's image")
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(("given", "expected"), [
    ("linux/arm64", Platform.of("linux", "arm64")),
    ("linux/aarch64", Platform.of("linux", "arm64")),
    ("arm", Platform.of("linux", "arm", "v7")),
    ("linux/arm/v6", Platform.of("linux", "arm", "v6")),
])
def test_one_platform_in_its_normal_form(given: str, expected: Platform) -> None:
    assert chosen(_options("--platform", given)) == expected


def test_none_without_the_flag() -> None:
    assert chosen(_options()) is None


@pytest.mark.parametrize("given", ["linux/amd64,linux/arm64", "nonsense/x86", "linux/", ""])
def test_anything_but_one_platform_is_a_usage_error(given: str) -> None:
    with pytest.raises(UsageError) as info:
        chosen(_options("--platform", given))
    assert info.value.exit_code == 2 and info.value.hint
