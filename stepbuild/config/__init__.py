"""Configuration files: stepbuild's config.toml (settings.py) and containers'
registries.conf (registries_conf.py), read and checked; the registry rules they make
(rules.py). Standard library only (tomllib): the CLI reads config.toml on every start.

`registry_rules()` is what a command that talks to registries uses: registries.conf's rules,
with config.toml's replacing any of the same prefix.
"""

from __future__ import annotations

from collections.abc import Mapping

from stepbuild.config.registries_conf import load_registries_conf
from stepbuild.config.rules import Endpoint, Mirror, RegistryRule, RegistryRules
from stepbuild.config.settings import Settings, load_settings

__all__ = ["Endpoint", "Mirror", "RegistryRule", "RegistryRules", "Settings",
           "load_settings", "registry_rules"]


def registry_rules(env: Mapping[str, str] | None = None) -> RegistryRules:
    """The registry rules of every configuration file (`ConfigError` if one is wrong)."""
    return load_registries_conf(env).overlaid(load_settings(env).registries)
