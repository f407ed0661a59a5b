"""Configuration files: stepbuild's config.toml (settings.py) and containers'
registries.conf (registries_conf.py), read and checked; the registry rules they make
(rules.py). Standard library only (tomllib): the CLI reads config.toml on every start.

`registry_rules()` is what a command that talks to registries uses: registries.conf's rules,
with config.toml's replacing any of the same prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stepbuild.config.rules import RegistryRules

__all__ = ["registry_rules"]


def registry_rules(env: Mapping[str, str] | None = None) -> RegistryRules:
    """The registry rules of every configuration file (`ConfigError` if one is wrong).

    Imported here, not at the top: every command reads config.toml's [defaults] at start
    (cli/config_defaults.py), and only those that reach a registry need registries.conf."""
    from stepbuild.config.registries_conf import load_registries_conf
    from stepbuild.config.settings import load_settings

    return load_registries_conf(env).overlaid(load_settings(env).registries)
