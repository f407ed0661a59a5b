"""containers-registries.conf(5), as Podman and Buildah read it: mirrors, blocks, insecure.

Files: `$STEPBUILD_REGISTRIES_CONF`, else `$CONTAINERS_REGISTRIES_CONF` (Podman's variable),
alone when set (`/dev/null` reads none); else `$XDG_CONFIG_HOME/containers/registries.conf`
if it exists (it then replaces the system file, as for Podman), else
`/etc/containers/registries.conf`; then the drop-ins `/etc/containers/registries.conf.d/*.conf`
in name order. A `[[registry]]` of a prefix already seen replaces the earlier one.

Read from the version 2 format: each `[[registry]]`'s prefix (default: its location),
location, insecure, blocked, mirror-by-digest-only and `[[registry.mirror]]` tables
(location, insecure, pull-from-mirror). From version 1, `[registries.insecure]` and
`[registries.block]` lists. Everything else (unqualified-search-registries, aliases,
short-name-mode, credential-helpers) is not our business and is ignored; a key we read that
has the wrong type is a `ConfigError` naming the file and key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stepbuild.config.rules import Mirror, RegistryRule, RegistryRules
from stepbuild.config.toml_files import read_toml
from stepbuild.errors import ConfigError

__all__ = ["REGISTRIES_CONF_ENV", "load_registries_conf", "registries_conf_files"]

REGISTRIES_CONF_ENV = ("STEPBUILD_REGISTRIES_CONF", "CONTAINERS_REGISTRIES_CONF")
SYSTEM_FILE = Path("/etc/containers/registries.conf")
DROP_IN_DIR = Path("/etc/containers/registries.conf.d")
_PULL_FROM = ("all", "digest-only", "tag-only")


def registries_conf_files(env: Mapping[str, str] | None = None) -> list[Path]:
    """The files to read, in order (see the module docstring)."""
    env = os.environ if env is None else env
    for name in REGISTRIES_CONF_ENV:
        if env.get(name):
            path = Path(env[name])
            if not path.exists():
                raise ConfigError(str(path), "does not exist", hint=f"{name} names it")
            return [path]
    user_dir = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or
                                                          os.path.expanduser("~"), ".config")
    user = Path(user_dir) / "containers" / "registries.conf"
    main = user if user.is_file() else SYSTEM_FILE
    drop_ins = sorted(DROP_IN_DIR.glob("*.conf")) if DROP_IN_DIR.is_dir() else []
    return [path for path in (main, *drop_ins) if path.is_file()]


def load_registries_conf(env: Mapping[str, str] | None = None) -> RegistryRules:
    """The rules of every registries.conf file (a later file's prefix wins)."""
    rules: list[RegistryRule] = []
    for path in registries_conf_files(env):
        document, _text = read_toml(path)
        rules.extend(_rules(document, str(path)))
    return RegistryRules(rules)


def _rules(document: dict[str, Any], source: str) -> list[RegistryRule]:
    entries = _get(document, "registry", list, source, "registry", "an array of tables")
    rules = [_v1_rule(document, source, kind) for kind in ("insecure", "block")]
    found = [rule for group in rules for rule in group]
    for n, entry in enumerate(entries or ()):
        found.append(_v2_rule(entry, source, f"registry[{n}]"))
    return found


def _v2_rule(entry: Any, source: str, where: str) -> RegistryRule:
    if not isinstance(entry, dict):
        raise ConfigError(source, "must be a table", key=where)
    location = _get(entry, "location", str, source, where, "a string") or ""
    prefix = _get(entry, "prefix", str, source, where, "a string") or location
    if not prefix:
        raise ConfigError(source, "needs a prefix or a location", key=where)
    if prefix.startswith("*.") and location:
        raise ConfigError(source, "cannot have a location: its prefix is a wildcard",
                          key=f"{where}.location")
    mirrors = []
    for n, table in enumerate(_get(entry, "mirror", list, source, where,
                                   "an array of tables") or ()):
        at = f"{where}.mirror[{n}]"
        if not isinstance(table, dict):
            raise ConfigError(source, "must be a table", key=at)
        mirror_location = _get(table, "location", str, source, at, "a string")
        if not mirror_location:
            raise ConfigError(source, "needs a location", key=at)
        pull_from = _get(table, "pull-from-mirror", str, source, at, "a string") or "all"
        if pull_from not in _PULL_FROM:
            raise ConfigError(source, f"must be one of {', '.join(_PULL_FROM)}",
                              key=f"{at}.pull-from-mirror")
        mirrors.append(Mirror(mirror_location, _get(table, "insecure", bool, source, at,
                                                    "true or false"), pull_from))
    return RegistryRule(
        prefix, location if location != prefix else "", tuple(mirrors),
        insecure=_get(entry, "insecure", bool, source, where, "true or false"),
        blocked=bool(_get(entry, "blocked", bool, source, where, "true or false")),
        digest_only_mirrors=bool(_get(entry, "mirror-by-digest-only", bool, source, where,
                                      "true or false")),
        source=source)


def _v1_rule(document: dict[str, Any], source: str, kind: str) -> list[RegistryRule]:
    """Version 1's `[registries.insecure] registries = [...]` (and `.block`)."""
    table = document.get("registries")
    if not isinstance(table, dict) or not isinstance(table.get(kind), dict):
        return []
    hosts = _get(table[kind], "registries", list, source, f"registries.{kind}",
                 "a list of strings") or []
    if not all(isinstance(h, str) and h for h in hosts):
        raise ConfigError(source, "must be a list of strings",
                          key=f"registries.{kind}.registries")
    if kind == "insecure":
        return [RegistryRule(h, insecure=True, source=source) for h in hosts]
    return [RegistryRule(h, blocked=True, source=source) for h in hosts]


def _get(table: dict[str, Any], key: str, kind: type, source: str, where: str,
         what: str) -> Any:
    """`table[key]` if it is a `kind` (None if absent); `ConfigError` otherwise."""
    value = table.get(key)
    if value is not None and not isinstance(value, kind):
        raise ConfigError(source, f"must be {what}", key=f"{where}.{key}" if where != key
                          else key)
    return value
