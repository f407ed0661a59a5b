"""stepbuild's configuration file, config.toml: where it is, what it may say, what it gives.

Files: `$STEPBUILD_CONFIG` alone when set (tests, CI jobs; `/dev/null` reads none); else
`/etc/stepbuild/config.toml`, then `$XDG_CONFIG_HOME/stepbuild/config.toml` (default
`~/.config/...`), each optional. The user's file wins key by key: a key it sets replaces the
system file's, the system file's other keys stay.

Schema (docs/configuration.md says it for users):

    [defaults]
    root = "/abs/path"          # the store (after --root and $STEPBUILD_ROOT)
    jobs = 4                    # build --jobs
    network = "default"         # build/run --network
    isolation = "auto"          # build/run --isolation
    gc-keep-storage = "10GB"    # after a build, prune the store to this size (quantities.py)

    [registries."PREFIX"]       # PREFIX: host[:port][/path] or *.domain
    mirrors = ["host[:port][/path]", ...]
    insecure = true             # plain HTTP allowed, TLS not verified: this registry only
    ca-file = "/abs/ca.crt"
    blocked = true

Every file is checked on its own, so an error names the file, the key and (when a scan
finds it) the line. The choices of `network` and `isolation` are the CLI's: cli/config_defaults.py
checks them against its parser.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepbuild.config.quantities import parse_size
from stepbuild.config.rules import Mirror, RegistryRule, RegistryRules
from stepbuild.config.toml_files import dotted, line_of, read_toml
from stepbuild.errors import ConfigError

__all__ = ["CONFIG_ENV", "SYSTEM_CONFIG", "Settings", "config_files", "load_settings"]

CONFIG_ENV = "STEPBUILD_CONFIG"
SYSTEM_CONFIG = Path("/etc/stepbuild/config.toml")
# host[:port] (a name, an IPv4 address or a bracketed IPv6 one), then an optional path.
_LOCATION = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:]+\])"
                       r"(?::[0-9]{1,5})?(?:/[a-z0-9._-]+)*")
_WILDCARD = re.compile(r"\*\.[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")

_Check = Callable[[Any], bool]


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_size(value: Any) -> bool:
    try:
        return isinstance(value, str) and parse_size(value) > 0
    except ValueError:
        return False


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(_is_str(v) for v in value)


# key → (check, what it must be)
_DEFAULT_KEYS: dict[str, tuple[_Check, str]] = {
    "root": (_is_str, "a non-empty string (an absolute path)"),
    "jobs": (_is_positive_int, "a positive integer"),
    "network": (_is_str, "a string"),
    "isolation": (_is_str, "a string"),
    "gc-keep-storage": (_is_size, "a size such as \"10GB\" or \"500MiB\""),
}
_REGISTRY_KEYS: dict[str, tuple[_Check, str]] = {
    "mirrors": (_is_str_list, "a list of strings"),
    "insecure": (_is_bool, "true or false"),
    "ca-file": (_is_str, "a non-empty string (a path)"),
    "blocked": (_is_bool, "true or false"),
}


@dataclass(frozen=True, slots=True)
class Settings:
    """What the config files say: `defaults` (key → value, only the keys set), the file
    each default came from (`default_sources`), the registry rules, and the files read."""

    defaults: Mapping[str, Any] = field(default_factory=dict)
    default_sources: Mapping[str, str] = field(default_factory=dict)
    registries: RegistryRules = field(default_factory=RegistryRules)
    files: tuple[str, ...] = ()


def config_files(env: Mapping[str, str] | None = None) -> list[Path]:
    """The config files to read, in order (a later one wins). `$STEPBUILD_CONFIG` must exist;
    the default files are read if they exist."""
    env = os.environ if env is None else env
    named = env.get(CONFIG_ENV)
    if named:
        path = Path(named)
        if not path.exists():
            raise ConfigError(named, "does not exist", hint=f"{CONFIG_ENV} names it; unset it"
                              " or point it at a config.toml")
        return [path]
    user_dir = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or
                                                          os.path.expanduser("~"), ".config")
    candidates = [SYSTEM_CONFIG, Path(user_dir) / "stepbuild" / "config.toml"]
    return [path for path in candidates if path.is_file()]


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and check the config files (`config_files`). `ConfigError` names the file, the
    key and the line when one is wrong."""
    defaults: dict[str, Any] = {}
    default_sources: dict[str, str] = {}
    registries: dict[str, dict[str, Any]] = {}
    sources: dict[str, dict[str, str]] = {}  # prefix → key → the file that set it
    files = config_files(env)
    for path in files:
        document = _checked(path)
        for key, value in document.get("defaults", {}).items():
            defaults[key], default_sources[key] = value, str(path)
        for prefix, table in document.get("registries", {}).items():
            registries.setdefault(prefix, {}).update(table)
            sources.setdefault(prefix, {}).update(dict.fromkeys(table, str(path)))
    rules = [_rule(prefix, table, sources[prefix]) for prefix, table in registries.items()]
    return Settings(defaults, default_sources, RegistryRules(rules),
                    tuple(str(p) for p in files))


def _rule(prefix: str, table: dict[str, Any], sources: dict[str, str]) -> RegistryRule:
    source = sources.get("blocked") or next(reversed(sources.values()), "")
    return RegistryRule(prefix, mirrors=tuple(Mirror(m) for m in table.get("mirrors", ())),
                        insecure=table.get("insecure"), ca_file=table.get("ca-file"),
                        blocked=table.get("blocked", False), source=source)


def _checked(path: Path) -> dict[str, Any]:
    """The document of one file, checked against the schema (relative paths resolved)."""
    document, text = read_toml(path)

    def fail(table: tuple[str, ...], key: str | None, problem: str) -> ConfigError:
        name = dotted(*table, key) if key is not None else dotted(*table)
        return ConfigError(str(path), problem, key=name, line=line_of(text, table, key))

    for key, value in document.items():
        if key not in ("defaults", "registries"):
            raise fail((), key, "is not a setting (the tables are [defaults] and"
                       " [registries.\"HOST\"])")
        if not isinstance(value, dict):
            raise fail((), key, "must be a table")
    defaults = document.get("defaults", {})
    _check_table(defaults, _DEFAULT_KEYS, ("defaults",), fail)
    if "root" in defaults:
        defaults["root"] = _absolute(defaults["root"], lambda p: fail(("defaults",), "root", p))
    for prefix, table in document.get("registries", {}).items():
        _check_registry(prefix, table, fail)
    return document


def _check_registry(prefix: str, table: Any,
                    fail: Callable[[tuple[str, ...], str | None, str], ConfigError]) -> None:
    """One `[registries."PREFIX"]` table (its ca-file made absolute in place)."""
    where = ("registries", prefix)
    if not (_LOCATION.fullmatch(prefix) or _WILDCARD.fullmatch(prefix)):
        raise fail(where, None, "is not a registry prefix (HOST[:PORT][/PATH] or *.DOMAIN)")
    if not isinstance(table, dict):
        raise fail(where, None, "must be a table")
    _check_table(table, _REGISTRY_KEYS, where, fail)
    for mirror in table.get("mirrors", ()):
        if not _LOCATION.fullmatch(mirror):
            raise fail(where, "mirrors", f"has {mirror!r}, which is not HOST[:PORT][/PATH]"
                       " (no scheme: insecure = true in the mirror's own"
                       " [registries.\"HOST\"] allows plain HTTP)")
    if "ca-file" in table:
        table["ca-file"] = _absolute(table["ca-file"], lambda p: fail(where, "ca-file", p))
        if not os.path.isfile(table["ca-file"]):
            raise fail(where, "ca-file", f"names {table['ca-file']}, which is not a file")


def _check_table(table: dict[str, Any], keys: dict[str, tuple[_Check, str]],
                 where: tuple[str, ...],
                 fail: Callable[[tuple[str, ...], str | None, str], ConfigError]) -> None:
    for key, value in table.items():
        if key not in keys:
            known = ", ".join(keys)
            raise fail(where, key, f"is not a setting (known here: {known})")
        check, what = keys[key]
        if not check(value):
            raise fail(where, key, f"must be {what}")


def _absolute(text: str, fail: Callable[[str], ConfigError]) -> str:
    """`~` expanded; anything still relative is an error (relative to what?)."""
    path = os.path.expanduser(text)
    if not os.path.isabs(path):
        raise fail(f"must be an absolute path (or start with ~), not {text!r}")
    return path
