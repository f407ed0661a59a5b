"""Registry credentials: WWW-Authenticate parsing, auth files (read, login, logout),
credential helpers, and the Authenticator's token cache."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from stepbuild.distribution.auth import (
    DOCKER_HUB_KEY,
    Authenticator,
    Challenge,
    Credentials,
    auth_files,
    load_credentials,
    login,
    logout,
    normalize_key,
    parse_challenges,
    repository_scope,
)
from stepbuild.errors import UsageError

# --- WWW-Authenticate ---------------------------------------------------------------------

CHALLENGES = [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:library/busybox:pull"',
     [("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                  "scope": "repository:library/busybox:pull"})]),
    ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
    ('Basic realm="basic-realm"', [("basic", {"realm": "basic-realm"})]),
    ("BEARER Realm=https://x.example/token, Service=reg",
     [("bearer", {"realm": "https://x.example/token", "service": "reg"})]),
    ('Basic realm="a", Bearer realm="b",service="s"',
     [("basic", {"realm": "a"}), ("bearer", {"realm": "b", "service": "s"})]),
    ('Bearer realm="q\\"uote\\\\d", error="insufficient_scope"',
     [("bearer", {"realm": 'q"uote\\d', "error": "insufficient_scope"})]),
    ('Bearer realm="r",scope="repository:a:pull repository:b:pull,push"',
     [("bearer", {"realm": "r", "scope": "repository:a:pull repository:b:pull,push"})]),
    ("Basic", [("basic", {})]),
    ("Negotiate, Basic realm=x", [("negotiate", {}), ("basic", {"realm": "x"})]),
    ("", []),
    ('Bearer realm=""', [("bearer", {"realm": ""})]),
]


@pytest.mark.parametrize(("header", "expected"), CHALLENGES, ids=range(len(CHALLENGES)))
def test_parse_challenges(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    assert [(c.scheme, dict(c.params)) for c in parse_challenges(header)] == expected


def test_challenge_accessors() -> None:
    (c,) = parse_challenges('Bearer realm="r",service="s",scope="a b",error="invalid_token"')
    assert (c.realm, c.service, c.scopes, c.error) == ("r", "s", ("a", "b"), "invalid_token")
    assert repository_scope("lib/x", "pull", "push") == "repository:lib/x:pull,push"


def test_garbage_does_not_crash_the_parser() -> None:
    for header in ['"', "=", ",,,", 'Bearer realm="unterminated', "Basic realm", "\x00 a=b"]:
        parse_challenges(header)


# --- auth files ---------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    return tmp_path


def _write(path: Path, config: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_auth_file_order(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert auth_files() == [home / ".docker" / "config.json"]
    monkeypatch.setenv("DOCKER_CONFIG", str(home / "dc"))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(home / "auth.json"))
    assert auth_files() == [home / "auth.json", home / "dc" / "config.json"]
    assert auth_files(home / "given.json") == [home / "given.json"]


def test_reads_docker_config(home: Path) -> None:
    _write(home / ".docker/config.json", {"auths": {
        "localhost:5000": {"auth": _auth("bob", "pa:ss")},
        DOCKER_HUB_KEY: {"auth": _auth("hubuser", "hubpass")},
        "https://ghcr.io": {"identitytoken": "refresh-me"},
        "quay.io": {"registrytoken": "tok"},
        "old.example": {"username": "u", "password": "p"},
    }})
    assert load_credentials("localhost:5000") == Credentials("bob", "pa:ss")
    assert load_credentials("docker.io") == Credentials("hubuser", "hubpass")
    assert load_credentials("ghcr.io") == Credentials(identity_token="refresh-me")
    assert load_credentials("quay.io") == Credentials(registry_token="tok")
    assert load_credentials("old.example") == Credentials("u", "p")
    assert load_credentials("elsewhere.example") is None


def test_registry_auth_file_comes_first(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(home / ".docker/config.json", {"auths": {"r.example": {"auth": _auth("a", "1")},
                                                    "s.example": {"auth": _auth("s", "3")}}})
    _write(home / "auth.json", {"auths": {"r.example": {"auth": _auth("b", "2")}}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(home / "auth.json"))
    assert load_credentials("r.example") == Credentials("b", "2")
    assert load_credentials("s.example") == Credentials("s", "3")  # falls through
    assert load_credentials("s.example", authfile=home / "auth.json") is None  # only that one


def test_namespaced_keys_most_specific_first(home: Path) -> None:
    _write(home / ".docker/config.json", {"auths": {
        "quay.io": {"auth": _auth("any", "1")},
        "quay.io/team": {"auth": _auth("team", "2")},
        "quay.io/team/app": {"auth": _auth("app", "3")},
    }})
    assert load_credentials("quay.io", "team/app").username == "app"  # type: ignore[union-attr]
    assert load_credentials("quay.io", "team/other").username == "team"  # type: ignore[union-attr]
    assert load_credentials("quay.io", "x/y").username == "any"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("key", "normal"),
    [("https://index.docker.io/v1/", "docker.io"), ("index.docker.io", "docker.io"),
     ("registry-1.docker.io", "docker.io"), ("http://localhost:5000/v2/", "localhost:5000"),
     ("quay.io/team/", "quay.io/team"), ("docker.io/library", "docker.io/library")],
)
def test_normalize_key(key: str, normal: str) -> None:
    assert normalize_key(key) == normal


def test_login_creates_file_0600_and_logout_removes(home: Path) -> None:
    path = login("localhost:5000", Credentials("bob", "secret"))
    assert path == home / ".docker" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"auths": {"localhost:5000":
                                                      {"auth": _auth("bob", "secret")}}}
    assert load_credentials("localhost:5000") == Credentials("bob", "secret")
    assert logout("localhost:5000") is True
    assert logout("localhost:5000") is False
    assert load_credentials("localhost:5000") is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_login_keeps_other_keys_and_replaces_any_form(home: Path) -> None:
    path = _write(home / ".docker/config.json", {
        "auths": {"https://index.docker.io/v1/": {"auth": _auth("old", "x")},
                  "other.example": {"auth": _auth("o", "o")}},
        "credHelpers": {}, "psFormat": "table {{.ID}}",
    })
    path.chmod(0o644)
    login("index.docker.io", Credentials("new", "y"))
    config = json.loads(path.read_text())
    assert config["psFormat"] == "table {{.ID}}"
    assert config["auths"] == {DOCKER_HUB_KEY: {"auth": _auth("new", "y")},
                               "other.example": {"auth": _auth("o", "o")}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp left


def test_login_to_an_explicit_authfile(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(home / "env-auth.json"))
    login("r.example", Credentials("a", "b"))
    assert (home / "env-auth.json").exists()
    given = home / "deep" / "dir" / "auth.json"
    login("r.example", Credentials("c", "d"), authfile=given)
    assert load_credentials("r.example", authfile=given) == Credentials("c", "d")
    assert logout("r.example", authfile=given)
    assert load_credentials("r.example") == Credentials("a", "b")


@pytest.mark.parametrize(
    ("content", "words"),
    [("{not json", "not valid JSON"), ("[]", "JSON object"),
     ('{"auths": []}', "'auths'"), ('{"auths": {"r.example": {"auth": "%%%"}}}', "base64"),
     ('{"auths": {"r.example": {"auth": "bm9jb2xvbg=="}}}', "base64")],
)
def test_broken_files_name_the_file(home: Path, content: str, words: str) -> None:
    path = home / ".docker" / "config.json"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(UsageError, match=words) as info:
        load_credentials("r.example")
    assert str(path) in info.value.message


def test_login_refuses_to_clobber_a_broken_file(home: Path) -> None:
    path = home / ".docker" / "config.json"
    path.parent.mkdir()
    path.write_text("{broken")
    with pytest.raises(UsageError):
        login("r.example", Credentials("a", "b"))
    assert path.read_text() == "{broken"


def test_empty_file_is_no_credentials(home: Path) -> None:
    path = home / ".docker" / "config.json"
    path.parent.mkdir()
    path.write_text("")
    assert load_credentials("r.example") is None
    login("r.example", Credentials("a", "b"))
    assert load_credentials("r.example") == Credentials("a", "b")


def _helper(home: Path, name: str, script: str) -> None:
    bin_dir = home / "bin"
    bin_dir.mkdir(exist_ok=True)
    helper = bin_dir / f"docker-credential-{name}"
    helper.write_text("#!/bin/sh\n" + script)
    helper.chmod(0o755)


def test_credential_helpers(home: Path) -> None:
    _helper(home, "fake", 'read server; [ "$1" = get ] || exit 3\n'
            'case "$server" in\n'
            '  r.example) echo \'{"ServerURL":"r.example","Username":"hu","Secret":"hs"}\';;\n'
            '  https://index.docker.io/v1/) echo \'{"Username":"<token>","Secret":"idt"}\';;\n'
            '  *) echo "credentials not found in native keychain"; exit 1;;\n'
            'esac\n')
    os.environ["PATH"] = f"{home / 'bin'}:/usr/bin:/bin"
    _write(home / ".docker/config.json", {"credHelpers": {"r.example": "fake"},
                                          "credsStore": "fake",
                                          "auths": {"s.example": {"auth": _auth("f", "g")}}})
    assert load_credentials("r.example") == Credentials("hu", "hs")
    assert load_credentials("docker.io") == Credentials(identity_token="idt")
    assert load_credentials("s.example") == Credentials("f", "g")  # store had none: the file


def test_missing_credential_helper_is_a_clear_error(home: Path) -> None:
    _write(home / ".docker/config.json", {"credsStore": "nosuchhelper"})
    with pytest.raises(UsageError, match="docker-credential-nosuchhelper"):
        load_credentials("r.example")


def test_credentials_repr_hides_secrets() -> None:
    text = repr(Credentials("bob", "hunter2", "idtok", "regtok"))
    assert "bob" in text
    assert not any(s in text for s in ("hunter2", "idtok", "regtok"))
    assert Credentials("bob", "pw").basic() == "Basic " + _auth("bob", "pw")
    assert Credentials().basic() is None


# --- Authenticator ------------------------------------------------------------------------


class FakeTokens:
    def __init__(self, lifetime: float = 300.0) -> None:
        self.calls: list[tuple[str, str, tuple[str, ...], Credentials | None]] = []
        self.lifetime = lifetime
        self.lock = threading.Lock()

    def __call__(self, realm: str, service: str, scopes: tuple[str, ...],
                 creds: Credentials | None) -> tuple[str, float]:
        time.sleep(0.01)  # widen the window for races
        with self.lock:
            self.calls.append((realm, service, scopes, creds))
            return f"token-{len(self.calls)}", self.lifetime


BEARER = Challenge("bearer", {"realm": "https://auth/token", "service": "svc"})


def test_no_challenge_no_header() -> None:
    auth = Authenticator(Credentials("a", "b"), FakeTokens())
    assert auth.authorization(["repository:x:pull"]) is None
    assert auth.scheme == ""


def test_basic_challenge_uses_credentials() -> None:
    auth = Authenticator(Credentials("a", "b"), FakeTokens())
    auth.learn(parse_challenges('Basic realm="r"'))
    assert auth.authorization() == "Basic " + _auth("a", "b")
    assert Authenticator(None, FakeTokens()).authorization() is None


def test_bearer_tokens_are_cached_per_scope_set() -> None:
    tokens = FakeTokens()
    creds = Credentials("a", "b")
    auth = Authenticator(creds, tokens)
    auth.learn([Challenge("basic", {"realm": "x"}), BEARER])  # Bearer preferred
    assert auth.scheme == "bearer"
    first = auth.authorization(["repository:x:pull"])
    assert first == "Bearer token-1"
    assert auth.authorization(("repository:x:pull",)) == first
    assert auth.authorization(["repository:x:pull,push"]) == "Bearer token-2"
    assert tokens.calls[0] == ("https://auth/token", "svc", ("repository:x:pull",), creds)
    auth.invalidate(["repository:x:pull"])
    assert auth.authorization(["repository:x:pull"]) == "Bearer token-3"


def test_expired_tokens_are_fetched_again(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = FakeTokens(lifetime=0)  # treated as the 60 s minimum
    auth = Authenticator(None, tokens)
    auth.learn([BEARER])
    now = time.monotonic()
    monkeypatch.setattr("stepbuild.distribution.auth.time.monotonic", lambda: now)
    auth.authorization(["s"])
    monkeypatch.setattr("stepbuild.distribution.auth.time.monotonic", lambda: now + 45)
    assert auth.authorization(["s"]) == "Bearer token-1"
    monkeypatch.setattr("stepbuild.distribution.auth.time.monotonic", lambda: now + 55)
    assert auth.authorization(["s"]) == "Bearer token-2"  # within the renewal margin


def test_registry_token_is_sent_as_is() -> None:
    tokens = FakeTokens()
    auth = Authenticator(Credentials(registry_token="abc"), tokens)
    auth.learn([BEARER])
    assert auth.authorization(["s"]) == "Bearer abc"
    assert tokens.calls == []


def test_token_cache_is_thread_safe() -> None:
    tokens = FakeTokens()
    auth = Authenticator(Credentials("a", "b"), tokens)
    auth.learn([BEARER])
    results: list[str | None] = []
    threads = [threading.Thread(target=lambda: results.append(auth.authorization(["s"])))
               for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["Bearer token-1"] * 16
    assert len(tokens.calls) == 1
