"""`stepbuild login` and `logout`: credentials checked against the registry, then kept in (or
removed from) the auth file (auth.py owns its format and where it is)."""

from __future__ import annotations

from pathlib import Path

from stepbuild.distribution.connection import Connection
from stepbuild.errors import InvalidReference, StepbuildError

__all__ = ["login", "logout", "registry_host"]


def login(host: str, username: str, password: str, *,
          connection: Connection | None = None) -> Path:
    """Check the credentials against the registry (`GET /v2/` authenticated as it asks),
    then store them in the auth file; return its path. `RegistryError` (nothing stored)
    when the registry refuses them."""
    from stepbuild.distribution.auth import Credentials
    from stepbuild.distribution.auth import login as store_login
    from stepbuild.distribution.client import Registry

    connection = connection or Connection()
    credentials = Credentials(username, password)
    host = registry_host(host)
    verify, ca_file = connection.tls(connection.registries.endpoint(host, ""))
    with Registry(host, auth=credentials, tls_verify=verify, ca_file=ca_file,
                  retries=connection.retries, backoff=connection.backoff,
                  stall_timeout=connection.stall_timeout) as registry:
        registry.ping()
    return store_login(host, credentials, authfile=connection.authfile)


def logout(host: str, *, authfile: str | None = None) -> Path:
    """Remove the stored credentials of `host`; return the auth file's path. `StepbuildError`
    when there were none."""
    from stepbuild.distribution.auth import default_auth_file
    from stepbuild.distribution.auth import logout as remove_login

    host = registry_host(host)
    if not remove_login(host, authfile=authfile):
        raise StepbuildError(f"not logged in to {host}",
                             hint=f"no credentials for it in {default_auth_file(authfile)}")
    return default_auth_file(authfile)


def registry_host(text: str) -> str:
    """`HOST[:PORT]`, also from `https://HOST/...` (what people paste)."""
    from stepbuild.distribution.auth import normalize_key
    from stepbuild.distribution.reference import DOCKER_HUB, valid_registry_host

    host = normalize_key(text).split("/", 1)[0]
    if not valid_registry_host(host):
        raise InvalidReference(text, "not a registry host ([HOST[:PORT]])")
    return host or DOCKER_HUB
