"""How a command reaches registries: one small value, made before anything heavy is imported.

Every build makes one (its --authfile/--tls-verify/--ca-file), even a no-op build that never
talks to a registry, so this module imports nothing but the standard library; the registry
client (client.py, requests) is imported only when `open` is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stepbuild.distribution.client import Registry

__all__ = ["Connection", "system_ca"]

_CERT_DIRS = ("/etc/containers/certs.d", "/etc/docker/certs.d")


@dataclass(frozen=True, slots=True)
class Connection:
    """How to reach registries: the auth file (None: the default search, auth.py),
    TLS verification and a CA file (None: `certs.d/<host>/ca.crt` under /etc/containers or
    /etc/docker if there is one, else the system's CAs), retries, and how long a transfer
    may make no progress before it fails (`stall_timeout`, seconds: transport.py)."""

    authfile: str | None = None
    tls_verify: bool = True
    ca_file: str | None = None
    retries: int = 4
    backoff: float = 0.5
    stall_timeout: float = 60.0  # transport.DEFAULT_STALL_TIMEOUT (not imported: requests)

    def open(self, host: str, repository: str | None = None) -> Registry:
        from stepbuild.distribution.auth import load_credentials
        from stepbuild.distribution.client import Registry

        credentials = load_credentials(host, repository, authfile=self.authfile)
        return Registry(host, auth=credentials, tls_verify=self.tls_verify,
                        ca_file=self.ca_file or system_ca(host, self.tls_verify),
                        retries=self.retries, backoff=self.backoff,
                        stall_timeout=self.stall_timeout)


def system_ca(host: str, tls_verify: bool) -> str | None:
    """Docker's and podman's per-registry CA: `<certs.d>/<host[:port]>/ca.crt`."""
    if not tls_verify:
        return None
    for directory in _CERT_DIRS:
        path = Path(directory) / host / "ca.crt"
        if path.is_file():
            return str(path)
    return None
