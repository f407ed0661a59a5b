"""--secret and --ssh options, and what a step's secrets become: files and environment
entries (read when the step runs, never when it is planned)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from stepbuild.build.mounts.plan import PlannedMount
from stepbuild.build.mounts.secrets import (
    SECRET_MAX,
    SecretSource,
    parse_secret,
    parse_ssh,
    secret_env,
    write_secret,
)
from stepbuild.errors import StepbuildError, UsageError


def test_secret_option_forms(tmp_path: Path) -> None:
    token = tmp_path / "token.txt"
    token.write_text("x")
    assert parse_secret(f"id=tok,src={token}") == ("tok", SecretSource("file", str(token)))
    assert parse_secret(f"id=tok,source={token}")[1].kind == "file"
    assert parse_secret(f"src={token}")[0] == "token.txt"
    assert parse_secret("id=tok,env=MY_TOKEN") == ("tok", SecretSource("env", "MY_TOKEN"))
    assert parse_secret("id=API_TOKEN") == ("API_TOKEN", SecretSource("env", "API_TOKEN"))
    assert parse_secret("type=env,id=a,src=VAR") == ("a", SecretSource("env", "VAR"))


@pytest.mark.parametrize("value", ["", "id=", "tok", "id=a,bogus=1", "id=a,src=/no/such/file",
                                   "id=a,type=socket"])
def test_bad_secret_options_are_usage_errors(value: str) -> None:
    with pytest.raises(UsageError):
        parse_secret(value)


def test_secret_values_are_read_when_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"v1")
    source = SecretSource("file", str(path))
    path.write_bytes(b"v2")
    assert source.read() == b"v2"
    monkeypatch.setenv("SECRET_VAR", "from-env")
    assert SecretSource("env", "SECRET_VAR").read() == b"from-env"
    monkeypatch.delenv("SECRET_VAR")
    with pytest.raises(StepbuildError, match="not set"):
        SecretSource("env", "SECRET_VAR").read()
    path.write_bytes(b"x" * (SECRET_MAX + 1))
    with pytest.raises(StepbuildError, match="larger"):
        source.read()


def test_ssh_option_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock_path = tmp_path / "agent.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock_path))
        assert parse_ssh("default") == ("default", str(sock_path))
        assert parse_ssh(f"gh={sock_path}") == ("gh", str(sock_path))
        (tmp_path / "key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        with pytest.raises(UsageError, match="not a socket"):
            parse_ssh(f"gh={tmp_path / 'key'}")
        with pytest.raises(UsageError):
            parse_ssh(f"gh={sock_path},{sock_path}")
        monkeypatch.delenv("SSH_AUTH_SOCK")
        with pytest.raises(UsageError, match="SSH_AUTH_SOCK"):
            parse_ssh("default")


def test_write_secret_gives_owner_and_mode_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "tok"
    data = b"x" * 70_000  # more than one write may take
    write_secret(path, data, uid=123, gid=45, mode=0o440)
    st = path.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (123, 45, 0o440)
    assert path.read_bytes() == data
    with pytest.raises(FileExistsError):
        write_secret(path, b"other", uid=0, gid=0, mode=0o400)
    assert path.read_bytes() == data
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):  # O_EXCL: a symlink is not followed
        write_secret(tmp_path / "link", b"v", uid=0, gid=0, mode=0o400)
    assert not (tmp_path / "elsewhere").exists()


def secret_mount(ident: str, env: str | None, source: SecretSource | None,
                 target: str = "") -> PlannedMount:
    return PlannedMount("secret", target, {}, cache_id=ident, env=env, secret=source)


def test_secret_env_exports_the_given_env_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN_VALUE", "s3cret")
    given = SecretSource("env", "TOKEN_VALUE")
    planned = [secret_mount("a", "TOKEN", given),
               secret_mount("b", None, given, "/run/secrets/b"),  # a file only
               secret_mount("c", "ABSENT", None),  # optional, not given
               PlannedMount("tmpfs", "/t", {})]
    assert secret_env(planned) == ["TOKEN=s3cret"]


def test_a_nul_byte_cannot_be_an_environment_variable(tmp_path: Path) -> None:
    (tmp_path / "v").write_bytes(b"a\0b")
    with pytest.raises(StepbuildError, match="NUL byte"):
        secret_env([secret_mount("tok", "T", SecretSource("file", str(tmp_path / "v")))])
