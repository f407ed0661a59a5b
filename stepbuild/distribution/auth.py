"""Registry credentials and authentication: auth files, `WWW-Authenticate`, the token cache.

Three jobs, no HTTP of its own (`client.py` sends the requests):

- **Auth files.** Credentials are read from, in order: `--authfile` (the `authfile` argument;
  then it is the only file), else `$REGISTRY_AUTH_FILE`, else `$DOCKER_CONFIG/config.json`
  or `~/.docker/config.json`. The format is Docker's: `{"auths": {"host": {"auth":
  base64("user:password")}}}`, plus `identitytoken` (an OAuth2 refresh token) and
  `registrytoken` (a bearer token sent as is). Keys may be URLs (`https://index.docker.io/v1/`,
  what `docker login` writes for Docker Hub) or, as in podman's auth.json, `host/namespace`
  (the most specific one that matches the repository wins). `credHelpers` / `credsStore` are
  read through `docker-credential-<name> get`, as Docker does. `login` / `logout` rewrite the
  file atomically (temp file, fsync, rename) with mode 0600 and keep every other key.
- **Challenges.** `parse_challenges` reads `WWW-Authenticate` (RFC 7235): `Basic realm=...`,
  `Bearer realm=...,service=...,scope=...,error=...`, several per header.
- **Authorization per scope set.** `Authenticator` turns what the registry asked for into an
  `Authorization` header: Basic from the credentials, or a Bearer token fetched from the
  challenge's realm (Distribution's token flow: docs/spec/auth/token.md; with an identity
  token, the OAuth2 refresh-token grant of oauth.md) and cached per scope set until it
  expires. Thread-safe: one `Authenticator` serves every transfer thread of a `Registry`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepbuild.distribution.reference import DOCKER_HUB
from stepbuild.errors import UsageError
from stepbuild.fs.durable import write_file

DOCKER_HUB_KEY = "https://index.docker.io/v1/"  # the auths key `docker login` writes
_DOCKER_HUB_ALIASES = frozenset({DOCKER_HUB, "index.docker.io", "registry-1.docker.io"})
TOKEN_MIN_LIFETIME = 60.0  # seconds; token.md: "if omitted, 60 seconds", and at least that
_TOKEN_MARGIN = 10.0  # renew a cached token this long before it expires
_HELPER_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """What to authenticate with. Empty strings mean "not given"; `repr` hides secrets.

    `identity_token` is an OAuth2 refresh token (Docker's `identitytoken`), exchanged for
    bearer tokens; `registry_token` is a bearer token sent as it is (`registrytoken`).
    """

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)

    def basic(self) -> str | None:
        """The `Authorization` value for Basic auth, None without a username."""
        if not self.username:
            return None
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


# --- auth files -------------------------------------------------------------------------


def auth_files(authfile: str | Path | None = None) -> list[Path]:
    """The files credentials are read from, first match wins (see the module docstring)."""
    if authfile:
        return [Path(authfile)]
    paths = []
    if env := os.environ.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(env))
    docker_dir = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    paths.append(Path(docker_dir) / "config.json")
    return paths


def default_auth_file(authfile: str | Path | None = None) -> Path:
    """The file `login` and `logout` write: the first of `auth_files`."""
    return auth_files(authfile)[0]


def normalize_key(key: str) -> str:
    """An auths key as `host[:port][/namespace]`: Docker's URL keys lose scheme and path
    (`https://index.docker.io/v1/` is `docker.io`), Docker Hub's aliases become `docker.io`."""
    key = key.strip()
    if "://" in key:
        key = key.split("://", 1)[1].split("/", 1)[0]
    key = key.rstrip("/")
    host, slash, rest = key.partition("/")
    if host in _DOCKER_HUB_ALIASES:
        host = DOCKER_HUB
    return host + slash + rest


def load_credentials(
    registry: str, repository: str | None = None, *, authfile: str | Path | None = None
) -> Credentials | None:
    """The credentials for `registry` (and `repository`, for namespaced keys), or None.

    Raises `UsageError` naming the file when a file exists but cannot be used (bad JSON,
    an `auth` that is not base64 of `user:password`, a helper that fails).
    """
    registry = normalize_key(registry)
    for path in auth_files(authfile):
        config = _read_config(path)
        if config is None:
            continue
        found = _credentials_in(config, path, registry, repository)
        if found is not None:
            return found
    return None


def login(
    registry: str, credentials: Credentials, *, authfile: str | Path | None = None
) -> Path:
    """Store `credentials` for `registry` in the auth file; return the file's path.

    Replaces any entry for the same registry (whatever form its key has), keeps all other
    keys, creates the file (0600) and its directory (0700) if needed. Atomic.
    """
    registry = normalize_key(registry)
    path = default_auth_file(authfile)
    config = _read_config(path) or {}
    auths = _auths(config, path)
    for key in [k for k in auths if normalize_key(k) == registry]:
        del auths[key]
    entry: dict[str, str] = {}
    if credentials.username:
        raw = f"{credentials.username}:{credentials.password}".encode()
        entry["auth"] = base64.b64encode(raw).decode("ascii")
    if credentials.identity_token:
        entry["identitytoken"] = credentials.identity_token
    if credentials.registry_token:
        entry["registrytoken"] = credentials.registry_token
    auths[DOCKER_HUB_KEY if registry == DOCKER_HUB else registry] = entry
    config["auths"] = auths
    _write_config(path, config)
    return path


def logout(registry: str, *, authfile: str | Path | None = None) -> bool:
    """Remove the entries for `registry` from the auth file; False if there were none."""
    registry = normalize_key(registry)
    path = default_auth_file(authfile)
    config = _read_config(path)
    if config is None:
        return False
    auths = _auths(config, path)
    keys = [k for k in auths if normalize_key(k) == registry]
    if not keys:
        return False
    for key in keys:
        del auths[key]
    _write_config(path, config)
    return True


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read auth file {path}: {exc.strerror}") from exc
    if not text.strip():
        return {}
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"auth file {path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise UsageError(f"auth file {path}: expected a JSON object")
    return config


def _auths(config: dict[str, Any], path: Path) -> dict[str, Any]:
    auths = config.get("auths")
    if auths is None:
        auths = config["auths"] = {}
    if not isinstance(auths, dict):
        raise UsageError(f"auth file {path}: 'auths' must be a JSON object")
    return auths


def _write_config(path: Path, config: dict[str, Any]) -> None:
    """temp (0600, same dir) → fsync → rename → fsync(dir)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file(path, (json.dumps(config, indent="\t") + "\n").encode(), 0o600)


def _credentials_in(
    config: dict[str, Any], path: Path, registry: str, repository: str | None
) -> Credentials | None:
    helpers = config.get("credHelpers") or {}
    helper = helpers.get(registry) if isinstance(helpers, dict) else None
    if isinstance(helper, str) and helper:
        return _from_helper(helper, registry)
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        found = _from_helper(store, registry)
        if found is not None:
            return found
    auths = {normalize_key(k): v for k, v in _auths(config, path).items()}
    for key in _candidate_keys(registry, repository):
        if key in auths:
            return _decode_entry(auths[key], path, key)
    return None


def _candidate_keys(registry: str, repository: str | None) -> list[str]:
    """`host/a/b`, `host/a`, `host`: the most specific key first (podman's order)."""
    keys = []
    if repository:
        parts = repository.split("/")
        keys = [f"{registry}/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1)]
    return [*keys, registry]


def _decode_entry(entry: Any, path: Path, key: str) -> Credentials | None:
    if not isinstance(entry, dict):
        raise UsageError(f"auth file {path}: entry {key!r} must be a JSON object")
    username, password = str(entry.get("username") or ""), str(entry.get("password") or "")
    if auth := entry.get("auth"):
        try:
            username, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, TypeError):
            sep = ""
        if not sep:
            raise UsageError(f"auth file {path}: entry {key!r}: 'auth' is not base64 of "
                             "user:password")
    creds = Credentials(username, password, str(entry.get("identitytoken") or ""),
                        str(entry.get("registrytoken") or ""))
    return creds if creds != Credentials() else None


def _from_helper(helper: str, registry: str) -> Credentials | None:
    """`docker-credential-<helper> get`, as Docker runs it (docker-credential-helpers)."""
    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        raise UsageError(f"credential helper docker-credential-{helper} not found in PATH",
                         hint="install it, or remove credHelpers/credsStore from the auth file")
    server = DOCKER_HUB_KEY if registry == DOCKER_HUB else registry
    try:
        done = subprocess.run([program, "get"], input=server, capture_output=True, text=True,
                              timeout=_HELPER_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"credential helper {program} failed: {exc}") from exc
    if done.returncode != 0:
        if "credentials not found" in done.stdout + done.stderr:
            return None
        raise UsageError(f"credential helper {program} failed: {done.stderr.strip()}")
    try:
        reply = json.loads(done.stdout)
        username, secret = str(reply.get("Username") or ""), str(reply.get("Secret") or "")
    except (ValueError, AttributeError) as exc:
        raise UsageError(f"credential helper {program} gave no JSON credentials") from exc
    if username == "<token>":  # docker-credential-helpers' marker for an identity token
        return Credentials(identity_token=secret)
    return Credentials(username, secret)


# --- WWW-Authenticate -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a `WWW-Authenticate` header: the scheme in lower case and its
    parameters (names in lower case)."""

    scheme: str
    params: Mapping[str, str]

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(self.params.get("scope", "").split())

    @property
    def error(self) -> str:
        return self.params.get("error", "")


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PARAM = re.compile(r"\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*")
_BARE_VALUE = re.compile(r"[^,\s]*")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a `WWW-Authenticate` value (RFC 7235 §4.1) into its challenges, in order.

    Lenient where servers are: unquoted values may hold any character but `,` and space;
    token68 forms and garbage are skipped.
    """
    challenges: list[Challenge] = []
    i, n = 0, len(header)
    while i < n:
        while i < n and header[i] in " \t,":
            i += 1
        scheme = _TOKEN.match(header, i)
        if scheme is None:
            i += 1
            continue
        params: dict[str, str] = {}
        i = scheme.end()
        while (param := _PARAM.match(header, i)) is not None:
            value, i = _param_value(header, param.end())
            params[param.group(1).lower()] = value
            while i < n and header[i] in " \t":
                i += 1
            if i < n and header[i] == ",":
                i += 1
        challenges.append(Challenge(scheme.group().lower(), params))
    return challenges


def _param_value(header: str, i: int) -> tuple[str, int]:
    if i < len(header) and header[i] == '"':
        out, i = [], i + 1
        while i < len(header) and header[i] != '"':
            if header[i] == "\\" and i + 1 < len(header):
                i += 1
            out.append(header[i])
            i += 1
        return "".join(out), i + 1
    bare = _BARE_VALUE.match(header, i)
    assert bare is not None  # matches the empty string at worst
    return bare.group(), bare.end()


def repository_scope(repository: str, *actions: str) -> str:
    """A token scope (token-scope.md): `repository:library/busybox:pull,push`."""
    return f"repository:{repository}:{','.join(actions)}"


# --- authorization ----------------------------------------------------------------------

# (realm, service, scopes, credentials) → (token, lifetime in seconds)
TokenFetcher = Callable[[str, str, tuple[str, ...], Credentials | None], tuple[str, float]]


class Authenticator:
    """`Authorization` headers for one registry, per scope set. Thread-safe.

    Lifecycle: `learn()` the challenges of the registry's 401 (on `/v2/` first, then of any
    401 on the way); `authorization(scopes)` before each request; `invalidate(scopes)` when a
    request with that header still got 401 (expired token, insufficient scope). Without a
    challenge, or with credentials but a registry that asks for none, no header is sent.
    Bearer tokens come from `fetch` (HTTP lives in `client.py`) and are cached by scope set
    until shortly before they expire; fetches are serialised, so parallel transfers needing
    the same token fetch it once.
    """

    def __init__(self, credentials: Credentials | None, fetch: TokenFetcher) -> None:
        self.credentials = credentials
        self._fetch = fetch
        self._lock = threading.Lock()
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}

    @property
    def scheme(self) -> str:
        """"basic", "bearer", or "" while no challenge was seen."""
        return self._challenge.scheme if self._challenge else ""

    def learn(self, challenges: Iterable[Challenge]) -> Challenge | None:
        """Remember the registry's challenge (Bearer preferred over Basic); return it, or
        None when there is neither (the previous one is kept then)."""
        found = {c.scheme: c for c in challenges}
        chosen = found.get("bearer") or found.get("basic")
        if chosen is not None:
            with self._lock:
                self._challenge = chosen
        return chosen

    def authorization(self, scopes: Iterable[str] = ()) -> str | None:
        """The header value for a request needing `scopes`, fetching a token if needed."""
        challenge, creds = self._challenge, self.credentials
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return creds.basic() if creds else None
        if challenge.scheme != "bearer":
            return None
        if creds and creds.registry_token:
            return f"Bearer {creds.registry_token}"
        key = tuple(sorted(set(scopes)))
        with self._lock:
            cached = self._tokens.get(key)
            if cached and cached[1] - _TOKEN_MARGIN > time.monotonic():
                return f"Bearer {cached[0]}"
            token, lifetime = self._fetch(challenge.realm, challenge.service, key, creds)
            lifetime = max(lifetime, TOKEN_MIN_LIFETIME)
            self._tokens[key] = (token, time.monotonic() + lifetime)
        return f"Bearer {token}"

    def invalidate(self, scopes: Iterable[str] = ()) -> None:
        """Forget the cached token for this scope set (the registry refused it)."""
        with self._lock:
            self._tokens.pop(tuple(sorted(set(scopes))), None)
