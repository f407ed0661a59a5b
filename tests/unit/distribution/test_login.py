"""login.py: the registry host from what people type or paste; logout of a registry with no
stored credentials is an error naming the auth file."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepbuild.distribution.login import logout, registry_host
from stepbuild.errors import InvalidReference, StepbuildError


@pytest.mark.parametrize(("text", "host"), [
    ("localhost:5000", "localhost:5000"),
    ("https://ghcr.io/v2/", "ghcr.io"),
    ("https://index.docker.io/v1/", "docker.io"),
    ("docker.io", "docker.io"),
])
def test_registry_host(text: str, host: str) -> None:
    assert registry_host(text) == host


def test_a_repository_is_no_registry_host() -> None:
    with pytest.raises(InvalidReference, match="not a registry host"):
        registry_host("not a host")


def test_logout_without_credentials_names_the_auth_file(tmp_path: Path) -> None:
    authfile = tmp_path / "auth.json"
    with pytest.raises(StepbuildError, match="not logged in to localhost:5000") as caught:
        logout("localhost:5000", authfile=str(authfile))
    assert str(authfile) in (caught.value.hint or "")
