"""Registry rules: which mirrors, TLS settings and blocks apply to an image name.

A rule belongs to a prefix of image names (`docker.io`, `registry.example/team`,
`*.example.com`), from config.toml (`[registries."PREFIX"]`) or registries.conf
(`[[registry]] prefix = ...`). A name `host/repository` takes the rule of its longest
matching prefix, as containers/image's sysregistriesv2 matches them: a prefix matches a name
it equals, or one that goes on after it with `/` (names here have no tag or digest, so
sysregistriesv2's `:` and `@` cases do not arise); a wildcard `*.example.com`
matches every host ending in `.example.com`, and only on the host.

A pull of `prefix/rest` tries each mirror `M` as `M/rest` first, in order, then the rule's
location (the prefix itself unless registries.conf relocates it) as `location/rest`. So a
`docker.io` mirror serves `docker.io/library/busybox` as `library/busybox` (what a registry:2
pull-through cache does). Pushes never use mirrors.

Pure: no files, no network. Building rules from files is `settings.py`'s and
`registries_conf.py`'s job.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from stepbuild.errors import RegistryBlocked

__all__ = ["Endpoint", "Mirror", "RegistryRule", "RegistryRules"]


@dataclass(frozen=True, slots=True)
class Mirror:
    """A mirror location, `host[:port][/path]`. `insecure` None: the mirror host's own rule
    (if any) decides, as for any other registry. `pull_from`: "all", "digest-only" or
    "tag-only" (registries.conf's pull-from-mirror): the pulls it serves."""

    location: str
    insecure: bool | None = None
    pull_from: str = "all"

    def serves(self, by_digest: bool) -> bool:
        return self.pull_from == "all" or (self.pull_from == "digest-only") == by_digest


@dataclass(frozen=True, slots=True)
class RegistryRule:
    """What applies to the names under `prefix`. `location` "" is the prefix itself;
    `insecure` True allows plain HTTP and skips TLS verification (None: not said);
    `ca_file` is the CA to verify the registry with; `digest_only_mirrors`: mirrors only for
    pulls by digest (registries.conf's mirror-by-digest-only). `source` is the file the rule
    came from, named in errors."""

    prefix: str
    location: str = ""
    mirrors: tuple[Mirror, ...] = ()
    insecure: bool | None = None
    ca_file: str | None = None
    blocked: bool = False
    digest_only_mirrors: bool = False
    source: str = ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One place to get an image from: `host` and `repository` there; `insecure` and
    `ca_file` as the rules say (None: not said); `mirror` True for a mirror."""

    host: str
    repository: str
    insecure: bool | None = None
    ca_file: str | None = None
    mirror: bool = False


class RegistryRules:
    """A set of rules, one per prefix (a later rule of the same prefix replaces an earlier).

    `pull_endpoints(host, repository, by_digest)` lists where to pull from, mirrors first;
    `endpoint(host, repository)` is the registry itself with its TLS settings (pushes,
    logins). Both raise `RegistryBlocked` for a blocked name, naming the file that blocks it.
    """

    def __init__(self, rules: Iterable[RegistryRule] = ()) -> None:
        self._rules: dict[str, RegistryRule] = {}
        for rule in rules:
            self._rules[rule.prefix] = rule

    def __bool__(self) -> bool:
        return bool(self._rules)

    def __iter__(self) -> Iterator[RegistryRule]:
        return iter(self._rules.values())

    def overlaid(self, winners: RegistryRules) -> RegistryRules:
        """These rules, with those of `winners` replacing any of the same prefix."""
        return RegistryRules([*self._rules.values(), *winners._rules.values()])

    def match(self, name: str) -> tuple[RegistryRule, str] | None:
        """The rule of the longest prefix matching `name` (`host/repository`) and the part
        of `name` that prefix matched (for a wildcard, the host); None if none does."""
        best: tuple[RegistryRule, str] | None = None
        for rule in self._rules.values():
            matched = _matched_prefix(rule.prefix, name)
            if matched is not None and (best is None or len(matched) > len(best[1])):
                best = (rule, matched)
        return best

    def endpoint(self, host: str, repository: str) -> Endpoint:
        """The registry `host` itself, for `repository`: its insecure/CA settings."""
        found = self.match(f"{host}/{repository}")
        if found is None:
            return Endpoint(host, repository)
        rule = found[0]
        _check_blocked(rule, f"{host}/{repository}")
        return Endpoint(host, repository, rule.insecure, rule.ca_file)

    def pull_endpoints(self, host: str, repository: str, *, by_digest: bool) -> list[Endpoint]:
        """Where to pull `host/repository` from: each mirror, then the (relocated) registry."""
        name = f"{host}/{repository}"
        found = self.match(name)
        if found is None:
            return [Endpoint(host, repository)]
        rule, matched = found
        _check_blocked(rule, name)
        rest = name[len(matched):]
        endpoints = []
        if by_digest or not rule.digest_only_mirrors:
            for mirror in (m for m in rule.mirrors if m.serves(by_digest)):
                endpoints.append(self._located(mirror.location + rest, mirror.insecure, None,
                                               mirror=True))
        location = rule.location or matched
        if location == matched:
            endpoints.append(Endpoint(host, repository, rule.insecure, rule.ca_file))
        else:
            endpoints.append(self._located(location + rest, rule.insecure, rule.ca_file,
                                           mirror=False))
        return endpoints

    def _located(self, name: str, insecure: bool | None, ca_file: str | None, *,
                 mirror: bool) -> Endpoint:
        """An endpoint at `name` (`host[:port]/repository`): settings not given come from the
        rule of that name, if there is one (a mirror's own `[registries."mirror:5000"]`)."""
        host, _, repository = name.partition("/")
        own = self.match(name)
        if own is not None:
            insecure = own[0].insecure if insecure is None else insecure
            ca_file = ca_file or own[0].ca_file
        return Endpoint(host, repository, insecure, ca_file, mirror)


def _matched_prefix(prefix: str, name: str) -> str | None:
    """The part of `name` that `prefix` matches, or None (see the module docstring)."""
    if prefix.startswith("*."):
        host = name.split("/", 1)[0]
        return host if host.endswith(prefix[1:]) else None
    if name == prefix:
        return prefix
    if name.startswith(prefix + "/"):
        return prefix
    return None


def _check_blocked(rule: RegistryRule, name: str) -> None:
    if rule.blocked:
        raise RegistryBlocked(name, rule.prefix, rule.source)
