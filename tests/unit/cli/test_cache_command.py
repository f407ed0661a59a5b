"""cli/cache_command.py: --cache, --filter until= and --keep-storage, parsed or refused with
one clear line."""

from __future__ import annotations

import argparse

import pytest

from stepbuild.cli.cache_command import Spec, parse_policy, parse_spec, parse_until
from stepbuild.errors import UsageError

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("text", "spec"), [
    ("type=registry,ref=registry.example/app:cache",
     Spec("registry", "registry.example/app:cache")),
    ("ref=registry.example/app:cache,mode=max", Spec("registry", "registry.example/app:cache")),
    ("type=local,src=/shared/cache", Spec("local", "/shared/cache")),
    ("type=local,dest=/shared/cache", Spec("local", "/shared/cache")),
])
def test_specs(text: str, spec: Spec) -> None:
    assert parse_spec(text) == spec


@pytest.mark.parametrize("text", ["registry.example/app", "type=ftp,src=x", "type=local",
                                  "type=local,src=a,dest=b",
                                  "type=registry,ref=registry.example/UPPER:x",
                                  "type=local,src=x,colour=blue"])
def test_bad_specs(text: str) -> None:
    with pytest.raises(UsageError):
        parse_spec(text)


@pytest.mark.parametrize(("text", "when"), [
    ("24h", NOW - 86400), ("90m", NOW - 5400), ("1h30m", NOW - 5400),
    ("1700000000", 1700000000.0), ("1700000000.5", 1700000000.5),
    ("2023-11-14T22:13:20Z", 1700000000.0), ("2023-11-14T22:13:20", 1700000000.0),
])
def test_until(text: str, when: float) -> None:
    assert parse_until(text, NOW) == when


def test_policy() -> None:
    options = argparse.Namespace(filter=["until=1h"], keep_storage="10m")
    policy = parse_policy(options, NOW)
    assert (policy.until, policy.keep_storage) == (NOW - 3600, 10 * 1024 * 1024)


@pytest.mark.parametrize(("flt", "keep"), [(["until=soon"], None), (["label=x"], None),
                                           (["until="], None), ([], "lots")])
def test_bad_policy(flt: list[str], keep: str | None) -> None:
    with pytest.raises(UsageError):
        parse_policy(argparse.Namespace(filter=flt, keep_storage=keep), NOW)
