"""HTTP to one registry: scheme and TLS, authentication, retries, redirects, errors.

The layer under `client.py` (go-containerregistry's `transport` package in spirit): it
knows nothing of blobs or manifests. `Transport.request` sends one request with the right
`Authorization` (only ever to the registry's own origin), follows redirects when asked,
answers a 401 once by learning the challenge, and turns anything unexpected into a
`RegistryError`; `Transport.retry` runs an attempt again on temporary failures.

Scheme: HTTPS, verified against `ca_file` if given, else the default CA bundle. Plain HTTP
only for a loopback registry that does not speak TLS (as Docker does; a certificate that
does not verify is an error, never a reason to fall back), or with `tls_verify=False` (TLS is
tried unverified first), or when forced by `insecure_http=True`. Decided once, by the first
`GET /v2/`, which also learns the registry's auth challenge.

Stalls: a registry that stops answering, or trickles (10 bytes a second never trips a read
timeout, which bounds only the gap between two reads), must not hold a build for ever. Every
connect, and every wait for an answer, gives up after `stall_timeout` seconds; a body read
with `body` (blobs, manifests) or sent through a `ProgressWatch` (uploads) fails when a window
of `stall_timeout` seconds moves fewer than `STALL_MIN_RATE` bytes a second on average. A
stall is a temporary failure, retried with the usual backoff; the last error names the
registry and the operation ("pulling blob sha256:… in app").

Threads: each thread gets its own `requests.Session` (requests does not document `Session`
as thread-safe); the token cache (`registry_auth.Authenticator`) is shared.
"""

from __future__ import annotations

import ipaddress
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from stepbuild import __version__
from stepbuild.distribution.auth import Authenticator, Credentials, parse_challenges
from stepbuild.distribution.reference import DOCKER_HUB, valid_registry_host
from stepbuild.errors import InvalidReference, RegistryError

DOCKER_HUB_API = "registry-1.docker.io"
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5
_TEMPORARY = frozenset({408, 429, 500, 502, 503, 504})
_MAX_BACKOFF = 10.0
_MAX_RETRY_AFTER = 30.0
DEFAULT_STALL_TIMEOUT = 60.0  # seconds without progress before a transfer fails
STALL_MIN_RATE = 1024  # bytes a second, on average over each window of the stall timeout
_CHUNK = 1 << 16
NETWORK_ERRORS = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)

_T = TypeVar("_T")


class StreamedBody(Protocol):
    """A request body read as it is sent, of a length known in advance (an upload of a file:
    client.py's `_UploadBody`). A fresh one is made for every attempt."""

    def __len__(self) -> int: ...

    def read(self, n: int = -1) -> bytes: ...


class Retryable(RegistryError):
    """A temporary failure; `retry_after` is the server's `Retry-After`, in seconds."""

    retry_after: float = 0.0


class ProgressWatch:
    """Counts the bytes of one transfer and raises `stalled()` when a window of `timeout`
    seconds ends with fewer than `STALL_MIN_RATE * timeout` bytes moved in it. A total
    stall never calls `moved`: the socket timeout (the same `timeout`) catches that."""

    def __init__(self, timeout: float, stalled: Callable[[], RegistryError]) -> None:
        self._timeout, self._stalled = timeout, stalled
        self._window_start, self._moved = time.monotonic(), 0

    def moved(self, n: int) -> None:
        self._moved += n
        now = time.monotonic()
        if now - self._window_start < self._timeout:
            return
        if self._moved < STALL_MIN_RATE * self._timeout:
            raise self._stalled()
        self._window_start, self._moved = now, 0


class Transport:
    """Authenticated, retrying HTTP to the registry `host`; see the module docstring.

    `retries` is how many times a temporary failure (5xx, 408, 429, network, a stall) is
    retried, after `backoff` * 2^n seconds (jittered, at most 10 s, or the server's
    Retry-After). `stall_timeout`: see the module docstring; `timeout` (connect, read),
    if given, replaces it for the socket only.
    """

    def __init__(
        self,
        host: str,
        *,
        auth: Credentials | None,
        tls_verify: bool,
        ca_file: str | None,
        insecure_http: bool | None,
        retries: int,
        backoff: float,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        timeout: float | tuple[float, float] | None = None,
    ) -> None:
        if not valid_registry_host(host):
            raise InvalidReference(host, "invalid registry host")
        self.host = host
        self.retries = retries
        self.backoff = backoff
        self.stall_timeout = stall_timeout
        self.timeout = timeout if timeout is not None else (stall_timeout, stall_timeout)
        self._api_host = DOCKER_HUB_API if host == DOCKER_HUB else host
        self._verify: bool | str = (ca_file or True) if tls_verify else False
        self._insecure_http = insecure_http
        self._http_allowed = insecure_http is not False and (
            insecure_http or not tls_verify or is_loopback(self._api_host)
        )
        self._auth = Authenticator(auth, self._fetch_token)
        self._base = ""  # "https://host" once the first exchange decided the scheme
        self._ready = threading.Lock()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        if not tls_verify:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    def close(self) -> None:
        """Close every thread's connections. The object stays usable (it reconnects)."""
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()

    def retry(self, attempt: Callable[[], _T]) -> _T:
        """Run `attempt`; on a temporary `RegistryError` wait and run it again."""
        for n in range(self.retries + 1):
            try:
                return attempt()
            except RegistryError as exc:
                if not exc.temporary or n == self.retries:
                    if exc.temporary and n:
                        raise RegistryError(exc.status, exc.codes, f"{exc.message} (after "
                                            f"{n + 1} attempts)", True, hint=exc.hint) from exc
                    raise
                retry_after = min(getattr(exc, "retry_after", 0.0), _MAX_RETRY_AFTER)
                delay = min(self.backoff * 2**n, _MAX_BACKOFF) * random.uniform(0.5, 1.0)
                time.sleep(max(delay, retry_after))
        raise AssertionError("unreachable")

    def request(
        self, method: str, url: str, *, what: str, scopes: tuple[str, ...] = (),
        headers: dict[str, str] | None = None,
        body: bytes | Callable[[], StreamedBody] | None = None,
        expect: tuple[int, ...] = (200,), stream: bool = False, follow: bool = False,
    ) -> requests.Response:
        """One exchange with the registry: authenticated, redirects followed if `follow`,
        a 401 answered once by learning the challenge. Returns a response whose status is
        in `expect` (the caller closes it); raises `RegistryError` otherwise. `what` names
        the object of the exchange in errors ("blob sha256:… in app")."""
        self._ensure_ready(method, what)
        url = urljoin(self._base, url)
        for again in (True, False):
            resp = self._send(method, url, what, scopes, headers or {}, body, stream, follow)
            if resp.status_code == 401 and again and self.own(resp.url):
                challenge = self._auth.learn(parse_challenges(
                    resp.headers.get("WWW-Authenticate", "")))
                if challenge is not None:
                    self._auth.invalidate(scopes)
                    if challenge.scheme == "bearer":
                        scopes = tuple(dict.fromkeys(scopes + challenge.scopes))
                    resp.close()
                    continue
            if resp.status_code not in expect:
                raise self._error(resp, method, what)
            return resp
        raise AssertionError("unreachable")

    def stalled(self, method: str, what: str) -> Retryable:
        """The error of a transfer that made no progress for `stall_timeout` seconds."""
        doing = "pulling" if method in ("GET", "HEAD") else "pushing"
        seconds = f"{self.stall_timeout:g}"
        return Retryable(None, (), f"{self.host}: {doing} {what}: no progress for {seconds} s"
                         " (the registry stalled)", True,
                         hint=f"on a slow link, wait longer with --stall-timeout SECONDS or"
                              f" STEPBUILD_STALL_TIMEOUT (now {seconds})")

    def watch(self, method: str, what: str) -> ProgressWatch:
        """A `ProgressWatch` for one transfer of `what`."""
        return ProgressWatch(self.stall_timeout, lambda: self.stalled(method, what))

    def body(self, resp: requests.Response, method: str, what: str, *,
             decode: bool = False) -> Iterator[bytes]:
        """The body of a `stream=True` response, chunk by chunk as it arrives (`read1`: a
        trickle comes back a few bytes at a time, so the watch sees it); a stall or a
        network failure is a temporary `RegistryError`. `decode`: undo Content-Encoding."""
        watch = self.watch(method, what)
        while True:
            try:
                chunk = resp.raw.read1(_CHUNK, decode_content=decode)
            except NETWORK_ERRORS as exc:
                raise self._network_error(method, what, exc) from exc
            if not chunk:
                return
            watch.moved(len(chunk))
            yield chunk

    def _network_error(self, method: str, what: str, exc: BaseException) -> RegistryError:
        if _is_timeout(exc):
            return self.stalled(method, what)
        return network_error(f"{method} {what}", exc)

    def _send(
        self, method: str, url: str, what: str, scopes: tuple[str, ...],
        headers: dict[str, str],
        body: bytes | Callable[[], StreamedBody] | None, stream: bool, follow: bool,
    ) -> requests.Response:
        for _hop in range(_MAX_REDIRECTS + 1):
            sent = dict(headers)
            if self.own(url) and (authorization := self._auth.authorization(scopes)):
                sent["Authorization"] = authorization
            data = body() if callable(body) else body
            try:
                resp = self._session().request(
                    method, url, headers=sent, data=data, stream=stream, timeout=self.timeout,
                    allow_redirects=False, proxies=_proxies(url),
                )
            except NETWORK_ERRORS as exc:
                if _is_timeout(exc):
                    raise self.stalled(method, what) from exc
                raise network_error(f"{method} {url}", exc) from exc
            if not (follow and resp.status_code in _REDIRECTS and "Location" in resp.headers):
                return resp
            url = urljoin(url, resp.headers["Location"])
            resp.close()
        raise RegistryError(None, (), f"{self.host}: too many redirects for {url}")

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # no ~/.netrc overriding our Authorization header
            session.verify = self._verify
            session.headers["User-Agent"] = f"stepbuild/{__version__}"
            with self._sessions_lock:
                self._sessions.append(session)
            self._local.session = session
        return session

    def own(self, url: str) -> bool:
        """Does `url` belong to the registry's origin (scheme, host, port)? Only those
        requests carry credentials."""
        mine, theirs = urlsplit(self._base), urlsplit(url)
        return (mine.scheme, mine.netloc.lower()) == (theirs.scheme, theirs.netloc.lower())

    def _ensure_ready(self, method: str, what: str) -> None:
        """Decide the scheme and learn the auth challenge, once: `GET /v2/` unauthenticated.
        `method` and `what` are the exchange it is for (they name it should it stall). Not
        retried here: every `request` runs inside the caller's `retry`, and a retry inside
        a retry would try 25 times."""
        if self._base:
            return
        with self._ready:
            if not self._base:
                self._probe(method, what)

    def _probe(self, method: str, what: str) -> None:
        schemes = ["http"] if self._insecure_http else ["https"]
        if self._http_allowed and not self._insecure_http:
            schemes.append("http")
        for scheme in schemes:
            url = f"{scheme}://{self._api_host}/v2/"
            try:
                resp = self._session().get(url, timeout=self.timeout, allow_redirects=False,
                                           proxies=_proxies(url))
            except requests.exceptions.SSLError as exc:
                if scheme == schemes[-1] or _is_certificate_error(exc):
                    raise self._tls_error(exc) from exc
                continue  # no TLS there: try plain HTTP
            except NETWORK_ERRORS as exc:
                if _is_timeout(exc):
                    raise self.stalled(method, what) from exc
                raise network_error(f"connect to {self.host}", exc, temporary=False) from exc
            with resp:
                if resp.status_code in (200, 401):
                    self._auth.learn(parse_challenges(resp.headers.get("WWW-Authenticate", "")))
                    self._base = f"{scheme}://{self._api_host}"
                    return
                if resp.status_code in _TEMPORARY:
                    raise self._error(resp, "GET", "the registry API")
                raise RegistryError(resp.status_code, (), f"{self.host} does not look like a "
                                    f"registry: GET {url} answered {resp.status_code}")

    def _tls_error(self, exc: Exception) -> RegistryError:
        if _is_certificate_error(exc):
            return RegistryError(None, (), f"{self.host}: TLS certificate not trusted "
                                 f"({_reason(exc)})", hint="give the registry's CA "
                                 "certificate (--ca-file), or use --tls-verify=false")
        return RegistryError(None, (), f"{self.host}: TLS handshake failed ({_reason(exc)})")

    def _fetch_token(self, realm: str, service: str, scopes: tuple[str, ...],
                     creds: Credentials | None) -> tuple[str, float]:
        """Distribution's token flow (token.md; oauth.md with an identity token)."""
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RegistryError(401, (), f"{self.host}: bad token realm {realm!r}")
        if (creds and parts.scheme == "http" and self._base.startswith("https:")
                and not is_loopback(parts.netloc)):
            raise RegistryError(401, (), f"{self.host}: refusing to send credentials to "
                                f"the plain-HTTP token service {realm}")
        query = ([("service", service)] if service else []) + [("scope", s) for s in scopes]
        try:
            if creds and creds.identity_token:
                form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                        "service": service, "scope": " ".join(scopes), "client_id": "stepbuild"}
                resp = self._session().post(realm, data=form, timeout=self.timeout,
                                            proxies=_proxies(realm),
                                            allow_redirects=False)
            else:
                basic = creds.basic() if creds else None
                resp = self._session().get(realm, params=query, timeout=self.timeout,
                                           proxies=_proxies(realm),
                                           headers={"Authorization": basic} if basic else {},
                                           allow_redirects=False)
        except NETWORK_ERRORS as exc:
            if _is_timeout(exc):
                raise self.stalled("GET", f"a token from {parts.netloc}") from exc
            raise network_error(f"token request to {parts.netloc}", exc) from exc
        with resp:
            if resp.status_code != 200:
                raise self._error(resp, "GET", f"a token from {parts.netloc}")
            try:
                reply = json.loads(resp.content)
                token = reply.get("token") or reply.get("access_token")
                lifetime = float(reply.get("expires_in") or 0)
            except (ValueError, AttributeError, TypeError) as exc:
                raise RegistryError(200, (), f"{self.host}: the token service "
                                    f"{parts.netloc} gave no token") from exc
        if not isinstance(token, str) or not token:
            raise RegistryError(200, (), f"{self.host}: the token service gave no token")
        return token, lifetime

    def location(self, resp: requests.Response) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise RegistryError(resp.status_code, (), f"{self.host}: upload response without "
                                "a Location header")
        return urljoin(resp.url, location)

    def _error(self, resp: requests.Response, method: str, what: str) -> RegistryError:
        """The `RegistryError` for an unexpected response (closes it)."""
        status, codes, details = resp.status_code, *_error_body(resp)
        resp.close()
        suffix = f" ({'; '.join(details)})" if details else ""
        hint = None
        if status == 401:
            if self._auth.credentials:
                text = f"{self.host}: authentication failed for {what}: wrong username or password?"
                hint = f"check the credentials for {self.host} (stepbuild login {self.host})"
            else:
                text = f"{self.host}: authentication required for {what}"
                hint = f"log in first: stepbuild login {self.host}"
        elif status == 403:
            text = f"{self.host}: access to {what} denied"
        elif status == 404:
            text = f"{what} not found on {self.host}"
        elif status in _TEMPORARY:
            text = f"{self.host}: {method} {what}: {status} {resp.reason}"
        else:
            text = f"{self.host}: {method} {what} failed: {status} {resp.reason}"
        cls = Retryable if status in _TEMPORARY else RegistryError
        error = cls(status, codes, text + suffix, status in _TEMPORARY, hint=hint)
        if isinstance(error, Retryable):
            error.retry_after = _retry_after(resp)
        return error


def _proxies(url: str) -> dict[str, str]:
    """HTTP(S)_PROXY / NO_PROXY from the environment (the sessions ignore the environment,
    or requests would also let ~/.netrc replace our Authorization header)."""
    return requests.utils.get_environ_proxies(url)


def _retry_after(resp: requests.Response) -> float:
    value = resp.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else 0.0


def _error_body(resp: requests.Response) -> tuple[tuple[str, ...], list[str]]:
    """Distribution's `{"errors": [{"code", "message", "detail"}]}`, if that is the body."""
    try:
        document = json.loads(resp.content[:65536]) if resp.request.method != "HEAD" else None
    except (ValueError, *NETWORK_ERRORS):
        return (), []
    errors = document.get("errors") if isinstance(document, dict) else None
    codes, details = [], []
    for entry in errors if isinstance(errors, list) else ():
        if isinstance(entry, dict) and isinstance(entry.get("code"), str):
            codes.append(entry["code"])
            message = entry.get("message")
            details.append(f"{entry['code']}: {message}" if message else entry["code"])
    return tuple(codes), details


def network_error(what: str, exc: BaseException, *, temporary: bool = True) -> RegistryError:
    return Retryable(None, (), f"{what}: network error: {_reason(exc)}", temporary)


def _reason(exc: BaseException) -> str:
    """The innermost useful reason of a requests/urllib3 exception chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    best = str(exc)
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        text = str(current)
        if text:
            best = text
        nested = getattr(current, "reason", None)
        if not isinstance(nested, BaseException):
            nested = next((a for a in current.args if isinstance(a, BaseException)), None)
        current = nested or current.__cause__ or current.__context__
    return best


def _is_timeout(exc: BaseException) -> bool:
    """Did a connect or a read wait for longer than the socket timeout? requests wraps
    urllib3's errors, which wrap the socket's: look through the chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, urllib3.exceptions.NewConnectionError):
            return False  # refused, unreachable: a ConnectTimeoutError by class, not a wait
        if isinstance(current, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError,
                                TimeoutError)):
            return True
        nested = getattr(current, "reason", None)
        if not isinstance(nested, BaseException):
            nested = next((a for a in current.args if isinstance(a, BaseException)), None)
        current = nested or current.__cause__ or current.__context__
    return False


def _is_certificate_error(exc: BaseException) -> bool:
    text = _reason(exc) + str(exc)
    return "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text or (
        "doesn't match" in text or "Hostname mismatch" in text)


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8, ::1 (with or without a port)."""
    if host.startswith("["):
        name = host[1:].split("]", 1)[0]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False

