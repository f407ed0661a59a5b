"""A stalled registry is an error, not a hang (issue 11, item 16).

A local HTTP server answers the ping and then stalls: it never answers, or trickles a body
at 10 bytes a second (which a socket read timeout never notices), or reads an upload at that
pace. With a stall timeout of 1 s each transfer fails with the registry, the repository and
the operation named, after its retries.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from stepbuild.cli.main import main
from stepbuild.distribution.client import Registry
from stepbuild.errors import RegistryError
from stepbuild.oci.digest import sha256_bytes
from stepbuild.oci.documents import MEDIA_TYPE_MANIFEST
from tests.local_http import LocalHTTPServer

BLOB = b"x" * 4000
DIGEST = sha256_bytes(BLOB)


class StallingRegistry(BaseHTTPRequestHandler):
    """GET /v2/ answers; a blob GET trickles; a manifest GET or PUT never answers; an
    upload PUT's body is read 10 bytes a second. `requests` counts what reached us."""

    protocol_version = "HTTP/1.1"
    stop = threading.Event()
    requests: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.requests.append(f"GET {self.path}")
        if self.path == "/v2/":
            self._reply(200, {"Content-Length": "0"})
        elif "/blobs/" in self.path:
            self._reply(200, {"Content-Length": str(len(BLOB))})
            self._trickle_out()
        else:
            self.stop.wait()

    def do_HEAD(self) -> None:  # noqa: N802
        self.requests.append(f"HEAD {self.path}")
        self._reply(404, {"Content-Length": "0"})

    def do_POST(self) -> None:  # noqa: N802
        self.requests.append(f"POST {self.path}")
        self._reply(202, {"Location": "/v2/app/blobs/uploads/1", "Content-Length": "0"})

    def do_PUT(self) -> None:  # noqa: N802
        self.requests.append(f"PUT {self.path}")
        if "/uploads/" in self.path:
            self._trickle_in()
        self.stop.wait()

    def _trickle_out(self) -> None:
        for offset in range(0, len(BLOB), 1):
            if self.stop.wait(0.1):
                return
            try:
                self.wfile.write(BLOB[offset:offset + 1])
                self.wfile.flush()
            except OSError:
                return  # the client gave up

    def _trickle_in(self) -> None:
        while not self.stop.wait(1.0):
            try:
                if not self.rfile.read1(10):
                    return
            except OSError:
                return


@pytest.fixture
def registry() -> Iterator[LocalHTTPServer]:
    handler = type("Handler", (StallingRegistry,), {"stop": threading.Event(), "requests": []})
    server = LocalHTTPServer(handler, poll=0.05)
    yield server
    handler.stop.set()
    server.close()


def _client(server: LocalHTTPServer, retries: int = 1) -> Registry:
    return Registry(f"127.0.0.1:{server.port}", insecure_http=True, retries=retries,
                    backoff=0.01, stall_timeout=1)


def _requests(server: LocalHTTPServer, method: str, part: str) -> list[str]:
    handler = server.httpd.RequestHandlerClass
    assert issubclass(handler, StallingRegistry)
    return [r for r in handler.requests if r.startswith(method) and part in r]


def test_a_trickled_blob_fails_after_its_retries(registry: LocalHTTPServer,
                                                 tmp_path: Path) -> None:
    with _client(registry, retries=2) as client, pytest.raises(RegistryError) as caught:
        client.get_blob("app", DIGEST, tmp_path / "blob")
    message = str(caught.value)
    assert message.startswith(f"127.0.0.1:{registry.port}: pulling blob {DIGEST} in app: "
                              "no progress for 1 s"), message
    assert "(after 3 attempts)" in message
    assert "--stall-timeout" in (caught.value.hint or "")
    assert len(_requests(registry, "GET", "/blobs/")) == 3  # retried, as other network errors
    assert not (tmp_path / "blob").exists()


def test_a_manifest_that_never_comes_fails(registry: LocalHTTPServer) -> None:
    with _client(registry) as client, pytest.raises(RegistryError) as caught:
        client.get_manifest("team/app", "1.0")
    assert (f"127.0.0.1:{registry.port}: pulling manifest team/app:1.0: no progress for 1 s"
            in str(caught.value))


def test_a_manifest_push_that_is_never_answered_fails(registry: LocalHTTPServer) -> None:
    with _client(registry) as client, pytest.raises(RegistryError) as caught:
        client.put_manifest("app", "1.0", b"{}", MEDIA_TYPE_MANIFEST)
    assert (f"127.0.0.1:{registry.port}: pushing manifest app:1.0: no progress for 1 s"
            in str(caught.value))


def test_an_upload_read_at_10_bytes_a_second_fails(registry: LocalHTTPServer,
                                                   tmp_path: Path) -> None:
    data = os.urandom(16 << 20)  # more than the socket buffers hold
    source = tmp_path / "layer"
    source.write_bytes(data)
    digest = sha256_bytes(data)
    with _client(registry, retries=0) as client, pytest.raises(RegistryError) as caught:
        client.put_blob("app", digest, len(data), source)
    assert (f"127.0.0.1:{registry.port}: pushing blob {digest} to app: no progress for 1 s"
            in str(caught.value))


def test_the_cli_takes_the_stall_timeout_from_the_environment(
        registry: LocalHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STEPBUILD_STALL_TIMEOUT", "1")
    status = main(["--root", str(tmp_path / "store"), "pull", "-q",
                   f"127.0.0.1:{registry.port}/app:1.0"])
    stderr = capsys.readouterr().err
    assert status == 1, stderr
    assert stderr.count("stepbuild: error:") == 1 and "Traceback" not in stderr
    assert f"127.0.0.1:{registry.port}: pulling manifest app:1.0: no progress for 1 s" in stderr


@pytest.mark.parametrize("value", ["0", "-3", "soon", "inf"])
def test_a_stall_timeout_must_be_a_positive_number(value: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--root", str(tmp_path), "pull", "--stall-timeout", value, "localhost/app"])
    assert exited.value.code == 2
    assert "--stall-timeout" in capsys.readouterr().err
