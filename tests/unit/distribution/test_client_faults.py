"""Fault injection against the registry client, with an in-process fake registry.

The fake (go-containerregistry's `pkg/registry` in spirit) speaks just enough of the
Distribution API for the client — blobs, uploads (monolithic and chunked), mounts, manifests,
tags, Basic or Bearer auth — and fails on demand: an HTTP status for the next N matching
requests, a connection dropped halfway through a request or response body, wrong bytes for
a digest, a redirect to another origin. The real registry is tested in
tests/integration/test_registry.py; this is for what it will not do on demand.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from stepbuild.distribution.auth import Credentials
from stepbuild.distribution.client import Registry
from stepbuild.errors import DigestMismatch, InvalidReference, RegistryError
from stepbuild.oci.digest import sha256_bytes
from stepbuild.oci.documents import MEDIA_TYPE_MANIFEST

BLOB_RE = re.compile(r"/v2/(?P<repo>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})")
UPLOAD_RE = re.compile(r"/v2/(?P<repo>.+)/blobs/uploads/(?P<id>[^/]*)")
MANIFEST_RE = re.compile(r"/v2/(?P<repo>.+)/manifests/(?P<ref>[^/]+)")
TAGS_RE = re.compile(r"/v2/(?P<repo>.+)/tags/list")


@dataclass
class Fault:
    """Applies to the next `times` requests whose method and kind match.

    `kind` is one of ping, blob, upload-start, upload-patch, upload-put, manifest, tags,
    token. `action`: an int status; "drop-request" (read half the body, then close);
    "drop-response" (send the headers and half the body, then close); "corrupt" (serve other
    bytes of the same length); "redirect" (send to `FakeRegistry.elsewhere`);
    "ignore-range" (answer 200 with everything).
    """

    method: str
    kind: str
    action: int | str
    times: int = 1


@dataclass
class FakeRegistry:
    users: dict[str, str] = field(default_factory=dict)
    bearer: bool = False
    blobs: dict[str, bytes] = field(default_factory=dict)
    repo_blobs: set[tuple[str, str]] = field(default_factory=set)
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    uploads: dict[str, bytearray] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    log: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    tokens_issued: list[str] = field(default_factory=list)
    elsewhere: str = ""
    host: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, method: str, kind: str, action: int | str, times: int = 1) -> None:
        self.faults.append(Fault(method, kind, action, times))

    def take_fault(self, method: str, kind: str) -> int | str | None:
        with self.lock:
            for fault in self.faults:
                if fault.method == method and fault.kind == kind and fault.times > 0:
                    fault.times -= 1
                    return fault.action
        return None

    def requests(self, method: str, pattern: str = "") -> list[str]:
        return [p for m, p, _ in self.log if m == method and pattern in p]

    def add_blob(self, repo: str, data: bytes) -> str:
        digest = sha256_bytes(data)
        self.blobs[digest] = data
        self.repo_blobs.add((repo, digest))
        return digest


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeRegistry

    def log_message(self, *args: object) -> None:
        pass

    # --- plumbing --------------------------------------------------------------------------

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status: int, code: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"errors": [{"code": code, "message": code.lower()}]}).encode()
        self.send(status, body, {"Content-Type": "application/json", **(headers or {})})

    def drop(self) -> None:
        self.close_connection = True
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def handle_any(self) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.fake.log.append((self.command, self.path, dict(self.headers)))
        kind, match = self.classify(url.path)
        if kind == "token":
            return self.token()
        fault = self.fake.take_fault(self.command, kind)
        if isinstance(fault, int):
            self.body()
            return self.error(fault, "UNAVAILABLE" if fault >= 500 else "DENIED",
                              {"Retry-After": "0"})
        if fault == "drop-request":
            self.rfile.read(int(self.headers.get("Content-Length") or 0) // 2)
            return self.drop()
        if not self.authorized(match.group("repo") if match else ""):
            return
        handler = getattr(self, f"do_{kind.replace('-', '_')}", None)
        if handler is None:
            return self.error(404, "NOT_FOUND")
        handler(match, fault)

    def classify(self, path: str) -> tuple[str, re.Match[str] | None]:
        if path == "/token":
            return "token", None
        if path == "/v2/":
            return "ping", None
        if m := UPLOAD_RE.fullmatch(path):
            kind = {"POST": "upload-start", "PATCH": "upload-patch", "PUT": "upload-put",
                    "DELETE": "upload-delete"}.get(self.command, "unknown")
            return kind, m
        for kind, pattern in (("blob", BLOB_RE), ("manifest", MANIFEST_RE), ("tags", TAGS_RE)):
            if m := pattern.fullmatch(path):
                return kind, m
        return "unknown", None

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any  # noqa: N815

    # --- auth ------------------------------------------------------------------------------

    def authorized(self, repo: str) -> bool:
        fake = self.fake
        if not fake.users:
            return True
        given = self.headers.get("Authorization", "")
        if fake.bearer:
            if given.startswith("Bearer ") and given[7:] in fake.tokens_issued:
                return True
            realm = f"http://{fake.host}/token"
            self.body()
            self.error(401, "UNAUTHORIZED", {"WWW-Authenticate":
                       f'Bearer realm="{realm}",service="fake"'})
            return False
        if given.startswith("Basic "):
            user, _, password = base64.b64decode(given[6:]).decode().partition(":")
            if fake.users.get(user) == password:
                return True
        self.body()
        self.error(401, "UNAUTHORIZED", {"WWW-Authenticate": 'Basic realm="fake"'})
        return False

    def token(self) -> None:
        given = self.headers.get("Authorization", "")
        user, _, password = base64.b64decode(given[6:] or b"").decode().partition(":")
        if self.fake.users.get(user) != password:
            return self.error(401, "UNAUTHORIZED")
        token = uuid.uuid4().hex
        self.fake.tokens_issued.append(token)
        self.send(200, json.dumps({"token": token, "expires_in": 300}).encode())

    # --- the API ---------------------------------------------------------------------------

    def do_ping(self, _m: Any, _fault: Any) -> None:
        self.send(200, b"{}")

    def do_blob(self, m: re.Match[str], fault: Any) -> None:
        repo, digest = m.group("repo"), m.group("digest")
        if (repo, digest) not in self.fake.repo_blobs:
            return self.error(404, "BLOB_UNKNOWN")
        data = self.fake.blobs[digest]
        if fault == "redirect":
            return self.send(307, headers={"Location": f"{self.fake.elsewhere}/{digest}"})
        if fault == "corrupt":
            data = bytes(b ^ 0xFF for b in data[:16]) + data[16:]
        start = 0
        if (wanted := self.headers.get("Range")) and fault != "ignore-range":
            start = int(wanted.removeprefix("bytes=").split("-")[0])
        headers = {"Docker-Content-Digest": digest, "Content-Type": "application/octet-stream"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if fault == "drop-response":
            self.send_response(206 if start else 200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:start + (len(data) - start) // 2])
            return self.drop()
        self.send(206 if start else 200, data[start:], headers)

    def do_upload_start(self, m: re.Match[str], _fault: Any) -> None:
        repo = m.group("repo")
        mount, source = self.query.get("mount"), self.query.get("from")
        if mount and (source, mount) in self.fake.repo_blobs:
            self.fake.repo_blobs.add((repo, mount))
            return self.send(201, headers={"Location": f"/v2/{repo}/blobs/{mount}"})
        upload = uuid.uuid4().hex
        self.fake.uploads[upload] = bytearray()
        self.send(202, headers={"Location": f"/v2/{repo}/blobs/uploads/{upload}",
                                "Range": "0-0"})

    def do_upload_patch(self, m: re.Match[str], _fault: Any) -> None:
        data = self.fake.uploads.get(m.group("id"))
        if data is None:
            return self.error(404, "BLOB_UPLOAD_UNKNOWN")
        start = int(self.headers["Content-Range"].split("-")[0])
        if start != len(data):
            return self.error(416, "BLOB_UPLOAD_INVALID")
        data += self.body()
        self.send(202, headers={"Location": self.path, "Range": f"0-{len(data) - 1}"})

    def do_upload_put(self, m: re.Match[str], _fault: Any) -> None:
        data = self.fake.uploads.pop(m.group("id"), None)
        if data is None:
            return self.error(404, "BLOB_UPLOAD_UNKNOWN")
        data += self.body()
        digest = self.query.get("digest", "")
        if sha256_bytes(bytes(data)) != digest:
            return self.error(400, "DIGEST_INVALID")
        self.fake.add_blob(m.group("repo"), bytes(data))
        self.send(201, headers={"Location": f"/v2/{m.group('repo')}/blobs/{digest}",
                                "Docker-Content-Digest": digest})

    def do_upload_delete(self, m: re.Match[str], _fault: Any) -> None:
        self.fake.uploads.pop(m.group("id"), None)
        self.send(204)

    def do_manifest(self, m: re.Match[str], fault: Any) -> None:
        key = (m.group("repo"), m.group("ref"))
        if self.command == "PUT":
            data = self.body()
            entry = (data, self.headers["Content-Type"])
            self.fake.manifests[key] = self.fake.manifests[(key[0], sha256_bytes(data))] = entry
            return self.send(201, headers={"Docker-Content-Digest": sha256_bytes(data)})
        if key not in self.fake.manifests:
            return self.error(404, "MANIFEST_UNKNOWN")
        data, media_type = self.fake.manifests[key]
        if fault == "corrupt":
            data = data.replace(b"2", b"3")
        self.send(200, data, {"Content-Type": media_type,
                              "Docker-Content-Digest": sha256_bytes(data)})

    def do_tags(self, m: re.Match[str], _fault: Any) -> None:
        repo = m.group("repo")
        tags = sorted(ref for r, ref in self.fake.manifests if r == repo
                      and not ref.startswith("sha256:"))
        if not tags:
            return self.error(404, "NAME_UNKNOWN")
        last = self.query.get("last")
        page = [t for t in tags if last is None or t > last][:2]  # tiny pages: paginate
        headers = {}
        if page and page[-1] != tags[-1]:
            headers["Link"] = f'</v2/{repo}/tags/list?n=2&last={page[-1]}>; rel="next"'
        self.send(200, json.dumps({"name": repo, "tags": page}).encode(), headers)


def _serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    registry = FakeRegistry()
    handler = type("BoundHandler", (Handler,), {"fake": registry})
    server, registry.host = _serve(handler)
    yield registry
    server.shutdown()
    server.server_close()


def client(fake: FakeRegistry, **kwargs: Any) -> Registry:
    kwargs.setdefault("backoff", 0.001)
    return Registry(fake.host, **kwargs)


@pytest.fixture
def blob(tmp_path: Path) -> tuple[Path, str, bytes]:
    data = os.urandom(3 << 20)
    path = tmp_path / "blob"
    path.write_bytes(data)
    return path, sha256_bytes(data), data


# --- uploads ------------------------------------------------------------------------------


def test_upload_503_twice_then_201(fake: FakeRegistry, blob: tuple[Path, str, bytes]) -> None:
    path, digest, data = blob
    fake.fail("PUT", "upload-put", 503, times=2)
    with client(fake) as reg:
        reg.put_blob("app", digest, len(data), path)
    assert fake.blobs[digest] == data
    assert len(fake.requests("POST", "/blobs/uploads/")) == 3  # a new session each time
    assert len(fake.requests("HEAD", "/blobs/")) == 3  # and a HEAD before each


def test_upload_dropped_mid_body_restarts_in_a_new_session(
    fake: FakeRegistry, blob: tuple[Path, str, bytes]
) -> None:
    path, digest, data = blob
    fake.fail("PUT", "upload-put", "drop-request")
    with client(fake) as reg:
        reg.put_blob("app", digest, len(data), path)
    assert fake.blobs[digest] == data
    puts = fake.requests("PUT", "/blobs/uploads/")
    assert len(puts) == 2 and puts[0].split("?")[0] != puts[1].split("?")[0]


def test_chunked_upload_with_a_dropped_patch(
    fake: FakeRegistry, blob: tuple[Path, str, bytes]
) -> None:
    path, digest, data = blob
    fake.fail("PATCH", "upload-patch", "drop-request")
    fake.fail("PATCH", "upload-patch", 502)
    progress: list[tuple[str, int, int]] = []
    with client(fake) as reg:
        reg.put_blob("app", digest, len(data), path, chunk_size=1 << 20,
                     on_progress=lambda *a: progress.append(a))
    assert fake.blobs[digest] == data
    assert len(fake.requests("POST", "/blobs/uploads/")) == 3
    assert len(fake.requests("PATCH")) == 2 + 3  # 1 dropped, 1 failed (502), 3 good ones
    patches = [h for m, _, h in fake.log if m == "PATCH"][-3:]
    assert [h["Content-Range"] for h in patches] == ["0-1048575", "1048576-2097151",
                                                     "2097152-3145727"]
    assert progress[-1] == (digest, len(data), len(data))


def test_upload_skipped_when_blob_is_there(
    fake: FakeRegistry, blob: tuple[Path, str, bytes]
) -> None:
    path, digest, data = blob
    fake.add_blob("app", data)
    with client(fake) as reg:
        reg.put_blob("app", digest, len(data), path)
    assert fake.requests("POST") == []


def test_upload_of_a_file_that_does_not_match(
    fake: FakeRegistry, blob: tuple[Path, str, bytes], tmp_path: Path
) -> None:
    path, digest, data = blob
    with client(fake) as reg:
        with pytest.raises(DigestMismatch) as info:
            reg.put_blob("app", digest, len(data) + 1, path)
        assert info.value.actual is None  # refused on size, nothing sent
        assert fake.requests("POST") == []
        other = tmp_path / "other"
        other.write_bytes(b"x" * len(data))
        with pytest.raises(DigestMismatch) as info:
            reg.put_blob("app", digest, len(data), other)
        assert info.value.actual == sha256_bytes(b"x" * len(data))
        with pytest.raises(DigestMismatch):
            reg.put_blob("app", digest, len(data), other, chunk_size=1 << 20)
    assert digest not in fake.blobs


def test_upload_that_keeps_failing_gives_up(
    fake: FakeRegistry, blob: tuple[Path, str, bytes]
) -> None:
    path, digest, data = blob
    fake.fail("POST", "upload-start", 500, times=100)
    with client(fake, retries=2) as reg, pytest.raises(RegistryError) as info:
        reg.put_blob("app", digest, len(data), path)
    assert info.value.status == 500 and info.value.temporary
    assert "after 3 attempts" in info.value.message
    assert len(fake.requests("POST")) == 3


# --- downloads ----------------------------------------------------------------------------


def test_download_dropped_midway_resumes_with_range(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    data = os.urandom(2 << 20)
    digest = fake.add_blob("app", data)
    fake.fail("GET", "blob", "drop-response")
    seen: list[int] = []
    with client(fake) as reg:
        reg.get_blob("app", digest, tmp_path / "out", size=len(data),
                     on_progress=lambda d, done, total: seen.append(done))
    assert (tmp_path / "out").read_bytes() == data
    gets = [h for m, p, h in fake.log if m == "GET" and "/blobs/" in p]
    assert len(gets) == 2 and "Range" not in gets[0]
    assert gets[1]["Range"] == f"bytes={len(data) // 2}-"
    assert seen[-1] == len(data)


def test_download_restarts_when_range_is_ignored(fake: FakeRegistry, tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    digest = fake.add_blob("app", data)
    fake.fail("GET", "blob", "drop-response")
    fake.fail("GET", "blob", "ignore-range")
    with client(fake) as reg:
        reg.get_blob("app", digest, tmp_path / "out")  # size learnt from Content-Length
    assert (tmp_path / "out").read_bytes() == data


def test_wrong_bytes_raise_and_leave_no_file(fake: FakeRegistry, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    digest = fake.add_blob("app", data)
    fake.fail("GET", "blob", "corrupt")
    dest = tmp_path / "out"
    with client(fake) as reg, pytest.raises(DigestMismatch) as info:
        reg.get_blob("app", digest, dest, size=len(data))
    assert info.value.expected == digest and info.value.actual != digest
    assert not dest.exists()
    assert len(fake.requests("GET", "/blobs/")) == 1  # not retried: it is not transient


def test_wrong_size_is_refused_before_reading(fake: FakeRegistry, tmp_path: Path) -> None:
    data = os.urandom(1000)
    digest = fake.add_blob("app", data)
    with client(fake) as reg, pytest.raises(DigestMismatch) as info:
        reg.get_blob("app", digest, tmp_path / "out", size=999)
    assert (info.value.expected_size, info.value.actual_size) == (999, 1000)
    assert not (tmp_path / "out").exists()


def test_download_that_keeps_dropping_gives_up(fake: FakeRegistry, tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    digest = fake.add_blob("app", data)
    fake.fail("GET", "blob", "drop-response", times=100)
    with client(fake, retries=3) as reg, pytest.raises(RegistryError) as info:
        reg.get_blob("app", digest, tmp_path / "out")
    assert info.value.status is None and info.value.temporary
    assert "network error" in info.value.message
    assert not (tmp_path / "out").exists()


def test_redirects_do_not_leak_authorization(fake: FakeRegistry, tmp_path: Path) -> None:
    data = os.urandom(5000)
    digest = fake.add_blob("app", data)
    fake.users = {"bob": "pw"}
    seen: list[dict[str, str]] = []

    class Storage(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            seen.append(dict(self.headers))
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    storage, storage_host = _serve(Storage)
    fake.elsewhere = f"http://{storage_host}/bucket"
    fake.fail("GET", "blob", "redirect")
    try:
        with client(fake, auth=Credentials("bob", "pw")) as reg:
            reg.get_blob("app", digest, tmp_path / "out", size=len(data))
    finally:
        storage.shutdown()
        storage.server_close()
    assert (tmp_path / "out").read_bytes() == data
    assert len(seen) == 1 and "Authorization" not in seen[0]
    assert all("Authorization" in h for m, p, h in fake.log if "/blobs/" in p)


# --- manifests, tags, errors --------------------------------------------------------------


def _manifest(config_digest: str) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": MEDIA_TYPE_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": config_digest, "size": 2},
                       "layers": []}).encode()


def test_manifest_round_trip_and_5xx(fake: FakeRegistry) -> None:
    data = _manifest(sha256_bytes(b"{}"))
    fake.fail("PUT", "manifest", 503)
    fake.fail("GET", "manifest", 500)
    with client(fake) as reg:
        digest = reg.put_manifest("app", "v1", data, MEDIA_TYPE_MANIFEST)
        assert reg.get_manifest("app", "v1") == (data, MEDIA_TYPE_MANIFEST, digest)
        assert reg.get_manifest("app", digest)[2] == digest


def test_manifest_with_wrong_bytes_for_its_digest(fake: FakeRegistry) -> None:
    data = _manifest(sha256_bytes(b"{}"))
    with client(fake) as reg:
        digest = reg.put_manifest("app", "v1", data, MEDIA_TYPE_MANIFEST)
        fake.fail("GET", "manifest", "corrupt")
        with pytest.raises(DigestMismatch):
            reg.get_manifest("app", digest)
        with pytest.raises(DigestMismatch):
            reg.put_manifest("app", sha256_bytes(b"other"), data, MEDIA_TYPE_MANIFEST)


def test_tags_follow_pagination(fake: FakeRegistry) -> None:
    data = _manifest(sha256_bytes(b"{}"))
    with client(fake) as reg:
        for tag in ("a", "b", "c", "d", "e"):
            reg.put_manifest("app", tag, data, MEDIA_TYPE_MANIFEST)
        assert reg.list_tags("app") == ["a", "b", "c", "d", "e"]
    assert len(fake.requests("GET", "/tags/list")) == 3


def test_unknown_things_are_404_errors(fake: FakeRegistry, tmp_path: Path) -> None:
    with client(fake) as reg:
        with pytest.raises(RegistryError) as info:
            reg.get_manifest("app", "nosuchtag")
        assert info.value.status == 404 and info.value.codes == ("MANIFEST_UNKNOWN",)
        assert "not found" in info.value.message and not info.value.temporary
        with pytest.raises(RegistryError) as info:
            reg.list_tags("nosuchrepo")
        assert info.value.codes == ("NAME_UNKNOWN",)
        with pytest.raises(RegistryError) as info:
            reg.get_blob("app", sha256_bytes(b"nothing"), tmp_path / "x")
        assert info.value.status == 404 and not (tmp_path / "x").exists()
        assert reg.has_blob("app", sha256_bytes(b"nothing")) is None
        assert reg.head_manifest("app", "nosuchtag") is None
    assert len(fake.requests("GET", "/manifests/")) == 1  # a 404 is not retried


def test_wrong_credentials_are_an_authentication_error(fake: FakeRegistry) -> None:
    fake.users = {"bob": "right"}
    with client(fake, auth=Credentials("bob", "wrong")) as reg, \
            pytest.raises(RegistryError) as info:
        reg.ping()
    assert info.value.status == 401 and not info.value.temporary
    assert "authentication" in info.value.message
    assert "login" in (info.value.hint or "")
    assert "\nhint: " in info.value.render()  # what the CLI prints: two lines, no traceback
    with client(fake) as reg, pytest.raises(RegistryError, match="authentication required"):
        reg.list_tags("app")
    with client(fake, auth=Credentials("bob", "right")) as reg:
        reg.ping()


def test_bearer_wrong_credentials(fake: FakeRegistry) -> None:
    fake.users, fake.bearer = {"bob": "right"}, True
    with client(fake, auth=Credentials("bob", "wrong")) as reg, \
            pytest.raises(RegistryError, match="authentication") as info:
        reg.has_blob("app", sha256_bytes(b"x"))
    assert info.value.status == 401


def test_network_failures_are_clear(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Registry(f"127.0.0.1:{port}") as reg, pytest.raises(RegistryError) as info:
        reg.ping()
    assert info.value.status is None
    assert "Connection refused" in info.value.message


def test_no_plain_http_unless_allowed(fake: FakeRegistry) -> None:
    with client(fake, insecure_http=False) as reg, pytest.raises(RegistryError, match="TLS"):
        reg.ping()
    with client(fake) as reg:  # loopback: falls back to HTTP, as docker does
        reg.ping()
    with client(fake, insecure_http=True) as reg:
        reg.ping()
    assert fake.requests("GET", "/v2/")


def test_mount(fake: FakeRegistry) -> None:
    digest = fake.add_blob("base", b"shared layer")
    with client(fake) as reg:
        assert reg.mount_blob("app", digest, "base") is True
        assert reg.has_blob("app", digest) == len(b"shared layer")
        assert reg.mount_blob("app2", sha256_bytes(b"absent"), "base") is False
    assert fake.uploads == {}  # the session the declined mount opened was cancelled


def test_parallel_transfers_share_one_client_and_one_token(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    fake.users, fake.bearer = {"bob": "pw"}, True
    payloads = [os.urandom(200_000 + i) for i in range(12)]
    for i, data in enumerate(payloads):
        (tmp_path / f"in{i}").write_bytes(data)
    digests = [sha256_bytes(d) for d in payloads]
    fake.fail("GET", "blob", "drop-response", times=3)
    with client(fake, auth=Credentials("bob", "pw")) as reg, ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: reg.put_blob("app", digests[i], len(payloads[i]),
                                             tmp_path / f"in{i}"), range(12)))
        list(pool.map(lambda i: reg.get_blob("app", digests[i], tmp_path / f"out{i}"),
                      range(12)))
    for i, data in enumerate(payloads):
        assert hashlib.sha256((tmp_path / f"out{i}").read_bytes()).digest() == \
            hashlib.sha256(data).digest()
    assert len(fake.tokens_issued) == 2  # pull,push for the uploads; pull for the downloads


def test_names_are_validated_before_they_reach_a_url(fake: FakeRegistry, tmp_path: Path) -> None:
    with pytest.raises(InvalidReference):
        Registry("http://example.com")
    with client(fake) as reg:
        for call in (lambda: reg.get_manifest("../etc", "v1"),
                     lambda: reg.get_manifest("app", "v1/../../x"),
                     lambda: reg.list_tags("app?x=1"),
                     lambda: reg.has_blob("App", sha256_bytes(b""))):
            with pytest.raises(InvalidReference):
                call()
    assert fake.log == []


@pytest.mark.parametrize(
    ("host", "kwargs", "allowed"),
    [("registry.example.com", {}, False), ("registry.example.com", {"tls_verify": False}, True),
     ("registry.example.com:5000", {"insecure_http": True}, True),
     ("127.0.0.5:5000", {}, True), ("[::1]:5000", {}, True), ("localhost:5000", {}, True),
     ("localhost", {"insecure_http": False}, False), ("docker.io", {}, False)],
)
def test_when_plain_http_may_be_tried(host: str, kwargs: dict[str, Any], allowed: bool) -> None:
    assert Registry(host, **kwargs)._http._http_allowed is allowed  # no network: a decision
