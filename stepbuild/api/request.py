"""What a build is asked to do (`BuildRequest`); where the store is (`store_root`, from
store/layout.py) and how registries are reached by default (`default_connection`).

Plain data, checked by `BuildRequest.check()` before anything heavy is imported: a bad value
is a `UsageError` naming the field, as a bad flag is on the command line. Option strings
(`outputs`, `cache_from`, `secrets`, ...) are the command line's own forms, parsed by the same
code, so one spelling works in a shell and in Python.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stepbuild.errors import UsageError
from stepbuild.store.layout import store_root

if TYPE_CHECKING:
    from stepbuild.distribution.connection import Connection
    from stepbuild.sandbox.limits import Limits

__all__ = ["BuildRequest", "NETWORKS", "PULL_POLICIES", "default_connection", "store_root"]

NETWORKS = ("default", "none", "host")
PULL_POLICIES = ("missing", "always", "never")  # distribution/pull.py's (not imported: requests)
ISOLATIONS = ("auto", "namespaces", "userns", "chroot")  # sandbox/isolation.py's CHOICES
COMPRESSIONS = ("gzip", "zstd", "none")
_SEQUENCES = ("tags", "no_cache_filter", "allow", "security_opts", "secrets", "ssh", "outputs",
              "labels", "annotations", "build_contexts", "cache_from", "cache_to", "platforms")


def default_connection() -> Connection:
    """What the CLI uses without --authfile, --tls-verify or --ca-file: the default auth
    file and TLS, with the registry rules of the configuration files (mirrors, per-registry
    TLS and CA, blocked registries; docs/configuration.md). `ConfigError` if one is wrong."""
    from stepbuild.config import registry_rules
    from stepbuild.distribution.connection import Connection

    return Connection(registries=registry_rules())


@dataclass(frozen=True)
class BuildRequest:
    """One build, as `stepbuild build` takes it (each field names its flag).

    `context`: the build context directory. `file`: the Stepfile (default: Stepfile, then
    Dockerfile, in the context). `tags`: -t names. `build_args`: --build-arg values (taken
    as given: no lookup in the environment). `target`, `no_cache`, `no_cache_filter` (the
    stages whose steps run again without a cache lookup), `network` (default, none,
    host), `allow` (--allow entitlements), `security_opts` (--security-opt), `isolation`
    (auto, namespaces, userns, chroot), `reproducible`, `secrets` (--secret forms),
    `ssh` (--ssh forms), `jobs` (stages built at once), `outputs` (--output forms),
    `compression` (of outputs and pushes), `labels` (--label KEY=VALUE), `annotations`
    (--annotation [TYPE:]KEY=VALUE), `build_contexts` (--build-context NAME=PATH,
    docker-image://REF or oci-layout://DIR forms), `push` (push to every tag), `iidfile`,
    `metadata_file`, `pull` (missing, always, never), `cache_from` / `cache_to` (--cache-from
    and --cache-to forms), `connection` (how registries are reached: auth file, TLS, CA;
    None: `default_connection()`),
    `limits` (--memory, --cpus, ... of every RUN; None: none), `root` (the store; None:
    $STEPBUILD_ROOT, else the default for this user), `platforms` (--platform values, each
    `os/arch[/variant]` or a comma-separated list of them; none: this machine's; several
    give an image index).
    """

    context: str | os.PathLike[str] = "."
    file: str | None = None
    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    no_cache_filter: tuple[str, ...] = ()
    network: str = "default"
    allow: tuple[str, ...] = ()
    security_opts: tuple[str, ...] = ()
    isolation: str = "auto"
    reproducible: bool = False
    secrets: tuple[str, ...] = ()
    ssh: tuple[str, ...] = ()
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    outputs: tuple[str, ...] = ()
    compression: str = "gzip"
    labels: tuple[str, ...] = ()
    annotations: tuple[str, ...] = ()
    build_contexts: tuple[str, ...] = ()
    push: bool = False
    iidfile: str | None = None
    metadata_file: str | None = None
    pull: str = "missing"
    cache_from: tuple[str, ...] = ()
    cache_to: tuple[str, ...] = ()
    connection: Connection | None = None
    limits: Limits | None = None
    root: str | os.PathLike[str] | None = None
    platforms: tuple[str, ...] = ()

    def check(self) -> None:
        """UsageError for a value no build could take (before anything is started)."""
        for name in _SEQUENCES:
            value = getattr(self, name)
            if isinstance(value, str | bytes) or not all(isinstance(v, str) for v in value):
                raise UsageError(f"BuildRequest.{name} must be a sequence of strings, not"
                                 f" {value!r}", hint=f"{name}=({value!r},) for one value")
        for name, value, choices in (("network", self.network, NETWORKS),
                                     ("pull", self.pull, PULL_POLICIES),
                                     ("isolation", self.isolation, ISOLATIONS),
                                     ("compression", self.compression, COMPRESSIONS)):
            if value not in choices:
                raise UsageError(f"invalid BuildRequest.{name} {value!r}",
                                 hint=f"one of {', '.join(choices)}")
        if not all(isinstance(k, str) and isinstance(v, str)
                   for k, v in self.build_args.items()):
            raise UsageError("BuildRequest.build_args must map names to strings",
                             hint="build_args={'VERSION': '1.2'}")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise UsageError(f"invalid BuildRequest.jobs {self.jobs!r}",
                             hint="a number of stages, 1 or more")
        from stepbuild.oci.platform import parse_platforms

        parse_platforms(self.platforms)  # UsageError naming --platform
        if not Path(self.context).is_dir():
            raise UsageError(f"the build context {self.context} is not a directory")
