"""Real OCI Distribution registries for tests: Debian's `docker-registry` on 127.0.0.1.

`start_registry(workdir, ...)` runs one at a free port with its storage under `workdir`, waits
until `GET /v2/` answers, and stops it when the `with` block ends. Three kinds:

- plain: HTTP, no authentication (what docker calls an insecure localhost registry);
- `tls=True, users={...}`: HTTPS with a server certificate signed by a CA made at test time
  (`openssl` CLI; the CA is `RunningRegistry.ca_file`) and htpasswd (bcrypt, `htpasswd -B`)
  Basic authentication;
- `token=True, users={...}`: Distribution's token authentication (Bearer): a small token
  service in this process checks Basic credentials and issues RS256 JWTs for the requested
  scopes, signed with a key whose certificate the registry trusts (`rootcertbundle`), the
  certificate itself in the token's `x5c` header (registry/auth/token/token.go).

The fixtures below are module-scoped (one registry per test module): tests share it, so each
test uses repository names of its own. Needs `docker-registry`, `apache2-utils` (htpasswd)
and `openssl` (Debian packages).
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.local_http import LocalHTTPServer

REGISTRY_BIN = "docker-registry"
USER, PASSWORD = "alice", "wonderland-42"
SERVICE, ISSUER = "stepbuild-test", "stepbuild-test-issuer"
_START_TIMEOUT = 15.0


@dataclass
class RunningRegistry:
    """A registry process: `host` is `127.0.0.1:<port>`, `ca_file` the CA that signed its
    certificate (TLS only), `users` the accepted username → password pairs."""

    host: str
    storage: Path
    process: subprocess.Popen[bytes]
    log: Path
    ca_file: str | None = None
    users: dict[str, str] = field(default_factory=dict)
    token_requests: list[str] = field(default_factory=list)

    @property
    def scheme(self) -> str:
        return "https" if self.ca_file else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"


def require_tools() -> None:
    for tool in (REGISTRY_BIN, "htpasswd", "openssl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} missing: apt-get install docker-registry apache2-utils openssl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def start_registry(
    workdir: Path, *, tls: bool = False, users: dict[str, str] | None = None, token: bool = False
) -> Iterator[RunningRegistry]:
    """Run a docker-registry in `workdir` until the block ends (see the module docstring)."""
    require_tools()
    workdir.mkdir(parents=True, exist_ok=True)
    users = dict(users or {})
    http: dict[str, Any] = {"secret": uuid.uuid4().hex}
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "storage")},
                    "delete": {"enabled": True}},
        "http": http,
    }
    ca_file = None
    if tls:
        ca_file, cert, key = make_server_cert(workdir)
        http["tls"] = {"certificate": str(cert), "key": str(key)}
    token_server = None
    issued: list[str] = []
    if token:
        signer_key, signer_cert = make_signer(workdir)
        token_server = _TokenServer(users, signer_key, signer_cert, issued)
        config["auth"] = {"token": {"realm": f"http://127.0.0.1:{token_server.port}/token",
                                    "service": SERVICE, "issuer": ISSUER,
                                    "rootcertbundle": str(signer_cert)}}
    elif users:
        config["auth"] = {"htpasswd": {"realm": "stepbuild-test",
                                       "path": str(write_htpasswd(workdir, users))}}
    try:
        running = _spawn(workdir, config, ca_file)
        running.users, running.token_requests = users, issued
        try:
            yield running
        finally:
            running.process.terminate()
            try:
                running.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait()
    finally:
        if token_server is not None:
            token_server.close()


def _spawn(workdir: Path, config: dict[str, Any], ca_file: str | None) -> RunningRegistry:
    """Start the registry at a free port; a port taken in between is retried."""
    for _attempt in range(3):
        port = free_port()
        config["http"]["addr"] = f"127.0.0.1:{port}"
        config_file = workdir / "config.yml"
        config_file.write_text(json.dumps(config))  # JSON is YAML
        log = workdir / "registry.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([REGISTRY_BIN, "serve", str(config_file)],
                                       stdout=out, stderr=subprocess.STDOUT)
        running = RunningRegistry(f"127.0.0.1:{port}", workdir / "storage", process, log,
                                  ca_file)
        if _wait_ready(running):
            return running
        process.kill()
        process.wait()
    pytest.fail(f"docker-registry did not start: {log.read_text()[-2000:]}")


def _wait_ready(running: RunningRegistry) -> bool:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            return False
        try:
            resp = requests.get(f"{running.url}/v2/", verify=running.ca_file or True, timeout=2)
            if resp.status_code in (200, 401):
                return True
        except requests.RequestException:
            pass
        time.sleep(0.05)
    return False


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_server_cert(workdir: Path) -> tuple[str, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it (EC P-256)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=stepbuild test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=workdir)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=workdir)
    (workdir / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext",
             cwd=workdir)
    return str(workdir / "ca.crt"), workdir / "server.crt", workdir / "server.key"


def make_signer(workdir: Path) -> tuple[Path, Path]:
    """An RSA key and its self-signed certificate, for signing tokens (RS256)."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "signer.key",
             "-out", "signer.crt", "-days", "2", "-subj", "/CN=stepbuild test token signer",
             cwd=workdir)
    return workdir / "signer.key", workdir / "signer.crt"


def write_htpasswd(workdir: Path, users: dict[str, str]) -> Path:
    path = workdir / "htpasswd"
    lines = []
    for user, password in users.items():
        done = subprocess.run(["htpasswd", "-nbB", user, password], check=True,
                              capture_output=True, text=True)
        lines.append(done.stdout.strip())
    path.write_text("\n".join(lines) + "\n")
    return path


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _TokenServer:
    """Distribution's token endpoint (docs/spec/auth/token.md), for tests: Basic credentials
    from `users` get every action they ask for; anonymous requests get no access at all."""

    def __init__(self, users: dict[str, str], key: Path, cert: Path, issued: list[str]) -> None:
        der = subprocess.run(["openssl", "x509", "-in", str(cert), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server.handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self.users, self.key, self.header, self.issued = users, key, header, issued
        self.http = LocalHTTPServer(Handler, poll=0.01)
        self.port = self.http.port

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlsplit(request.path).query)
        user = self._user(request.headers.get("Authorization", ""))
        if user is None:
            request.send_response(401)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        scopes = [s for value in query.get("scope", []) for s in value.split()]
        self.issued.append(" ".join(scopes))
        access = []
        for scope in scopes if user else ():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": user, "aud": query.get("service", [""])[0],
                  "exp": now + 300, "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex,
                  "access": access}
        signing_input = ".".join(_b64url(json.dumps(part).encode())
                                 for part in (self.header, claims))
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing_input.encode(), check=True,
                                   capture_output=True).stdout
        body = json.dumps({"token": f"{signing_input}.{_b64url(signature)}",
                           "expires_in": 300}).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def _user(self, authorization: str) -> str | None:
        """The authenticated user, "" for anonymous, None for wrong credentials."""
        if not authorization:
            return ""
        scheme, _, encoded = authorization.partition(" ")
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return None
        if scheme.lower() != "basic" or self.users.get(user) != password:
            return None
        return user

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """An HTTP registry without authentication."""
    with start_registry(tmp_path_factory.mktemp("registry-plain")) as running:
        yield running


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """An HTTPS registry (test CA in `ca_file`) with htpasswd Basic auth for USER/PASSWORD."""
    with start_registry(tmp_path_factory.mktemp("registry-tls"), tls=True,
                        users={USER: PASSWORD}) as running:
        yield running


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """An HTTP registry with token (Bearer) auth; USER/PASSWORD get tokens."""
    with start_registry(tmp_path_factory.mktemp("registry-token"), token=True,
                        users={USER: PASSWORD}) as running:
        yield running
