"""How a command reaches registries: one small value, made before anything heavy is imported.

Every build makes one (its --authfile/--tls-verify/--ca-file), even a no-op build that never
talks to a registry, so this module imports nothing but the standard library; the registry
client (client.py, requests) is imported only when `open` is called.

The registry rules of the configuration files (stepbuild/config/: mirrors, per-registry
insecure and CA, blocked) come in `registries`. TLS for one registry: verified unless
--tls-verify=false (every registry) or the rule says `insecure` (that one); the CA is the
rule's `ca-file`, else --ca-file, else certs.d's, else the system's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stepbuild.config.rules import Endpoint, RegistryRules

if TYPE_CHECKING:
    from stepbuild.distribution.client import Registry

__all__ = ["Connection", "system_ca"]

_CERT_DIRS = ("/etc/containers/certs.d", "/etc/docker/certs.d")


@dataclass(frozen=True, slots=True)
class Connection:
    """How to reach registries: the auth file (None: the default search, auth.py),
    TLS verification and a CA file (None: `certs.d/<host>/ca.crt` under /etc/containers or
    /etc/docker if there is one, else the system's CAs), retries, and how long a transfer
    may make no progress before it fails (`stall_timeout`, seconds: transport.py), and the
    registry rules of the configuration files (`registries`)."""

    authfile: str | None = None
    tls_verify: bool = True
    ca_file: str | None = None
    retries: int = 4
    backoff: float = 0.5
    stall_timeout: float = 60.0  # transport.DEFAULT_STALL_TIMEOUT (not imported: requests)
    registries: RegistryRules = field(default_factory=RegistryRules)

    def open(self, host: str, repository: str | None = None) -> Registry:
        """The registry `host` itself (pushes, a registry cache, logins): never a mirror.
        `RegistryBlocked` when a rule blocks it."""
        return self.open_endpoint(self.registries.endpoint(host, repository or ""))

    def pull_endpoints(self, host: str, repository: str, *, by_digest: bool) -> list[Endpoint]:
        """Where a pull of `host/repository` goes, in order: the mirrors, then the registry
        (rules.py). `RegistryBlocked` when a rule blocks it."""
        return self.registries.pull_endpoints(host, repository, by_digest=by_digest)

    def open_endpoint(self, endpoint: Endpoint, *, retries: int | None = None) -> Registry:
        """A client for `endpoint`, with its own TLS settings and credentials."""
        from stepbuild.distribution.auth import load_credentials
        from stepbuild.distribution.client import Registry

        credentials = load_credentials(endpoint.host, endpoint.repository or None,
                                       authfile=self.authfile)
        verify, ca_file = self.tls(endpoint)
        return Registry(endpoint.host, auth=credentials, tls_verify=verify, ca_file=ca_file,
                        retries=self.retries if retries is None else retries,
                        backoff=self.backoff, stall_timeout=self.stall_timeout)

    def tls(self, endpoint: Endpoint) -> tuple[bool, str | None]:
        """Verify TLS for `endpoint`? With which CA file (None: the system's)?"""
        verify = self.tls_verify and not endpoint.insecure
        return verify, endpoint.ca_file or self.ca_file or system_ca(endpoint.host, verify)


def system_ca(host: str, tls_verify: bool) -> str | None:
    """Docker's and podman's per-registry CA: `<certs.d>/<host[:port]>/ca.crt`."""
    if not tls_verify:
        return None
    for directory in _CERT_DIRS:
        path = Path(directory) / host / "ca.crt"
        if path.is_file():
            return str(path)
    return None
