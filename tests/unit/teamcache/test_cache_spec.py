"""teamcache/cache.py: the --cache-from / --cache-to values, and what a failed export does.

buildx's conventions: a bare value is a registry reference; `ignore-error=true` on a
--cache-to turns a failed export into a warning. Without it, the error names --cache-to and
its ref or dest, and the cause. The export runs against a real store and a real directory
that cannot be one (a file where the cache dir should be).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stepbuild.errors import UsageError
from stepbuild.store.store import Store
from stepbuild.teamcache.cache import CacheExportError, CacheSpec, TeamCache, parse_cache_spec


@pytest.mark.parametrize("direction", ["from", "to"])
def test_a_bare_value_is_a_registry_reference(direction: str) -> None:
    bare = parse_cache_spec("registry.example:5000/team/app:cache", direction)
    spelled = parse_cache_spec("type=registry,ref=registry.example:5000/team/app:cache",
                               direction)
    assert bare == spelled == CacheSpec("registry", "registry.example:5000/team/app:cache")


@pytest.mark.parametrize("value", ["./cache", "/var/cache/team", "Cache", "a b"])
def test_a_bare_value_that_is_no_reference_says_how_to_name_a_directory(value: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_cache_spec(value, "from")
    assert "--cache-from" in caught.value.message and value in caught.value.message
    assert "type=local,src=DIR" in (caught.value.hint or "")


def test_a_bare_reference_with_options_points_at_the_long_form() -> None:
    with pytest.raises(UsageError) as caught:
        parse_cache_spec("reg.example/app:cache,mode=max", "to")
    assert "type=registry,ref=reg.example/app:cache" in (caught.value.hint or "")


@pytest.mark.parametrize(("text", "expected"), [
    ("type=local,dest=/c,ignore-error=true", True),
    ("type=local,dest=/c,ignore-error=TRUE", True),
    ("type=local,dest=/c,ignore-error=false", False),
    ("type=local,dest=/c", False),
    ("type=registry,ref=reg.example/app:c,mode=max,ignore-error=true", True),
])
def test_ignore_error(text: str, expected: bool) -> None:
    assert parse_cache_spec(text, "to").ignore_error is expected


@pytest.mark.parametrize("text", [
    "type=local,dest=/c,ignore-error=maybe",
    "type=local,dest=/c,mode=most",
    "type=local,dest=/c,colour=blue",
    "type=s3,bucket=x",
    "type=registry,ref=",
    "type=registry,ref=Reg/App",
    "type=local",
    "",
])
def test_bad_values_are_usage_errors_naming_the_flag(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_cache_spec(text, "to")
    assert "--cache-to" in caught.value.message


def store_and_file(tmp_path: Path) -> tuple[Store, Path]:
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("where the cache dir should be")
    return Store(tmp_path / "store"), not_a_dir


def test_a_failed_export_names_cache_to_its_dest_and_the_cause(tmp_path: Path) -> None:
    store, not_a_dir = store_and_file(tmp_path)
    warnings: list[str] = []
    team = TeamCache(store, [], [parse_cache_spec(f"type=local,dest={not_a_dir}", "to")],
                     warnings.append)
    with pytest.raises(CacheExportError) as caught:
        team.export(set())
    error = caught.value
    assert error.exit_code == 1 and error.spec.location == str(not_a_dir)
    assert error.message.startswith(f"--cache-to type=local,dest={not_a_dir}: ")
    assert "Not a directory" in error.cause or "File exists" in error.cause
    assert "\n" not in error.message and "tagged" in (error.hint or "")
    assert warnings == []


def test_ignore_error_warns_once_and_the_other_destinations_still_export(
        tmp_path: Path) -> None:
    store, not_a_dir = store_and_file(tmp_path)
    good = tmp_path / "good-cache"
    warnings: list[str] = []
    team = TeamCache(store, [], [
        parse_cache_spec(f"type=local,dest={not_a_dir},ignore-error=true", "to"),
        parse_cache_spec(f"type=local,dest={good}", "to"),
    ], warnings.append)
    team.export(set())
    [warning] = warnings
    assert warning.startswith(f"--cache-to type=local,dest={not_a_dir}: cannot export")
    assert "ignore-error=true" in warning
    assert (good / "oci-layout").is_file()  # the second destination was written
