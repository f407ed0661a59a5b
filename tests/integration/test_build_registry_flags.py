"""`build --authfile/--tls-verify/--ca-file`: one connection for every registry a build reaches.

Against real registries (registry_fixture.py): HTTPS with a test CA and htpasswd, where the
flags are needed for FROM (pulling the base), `--push`, and `--cache-to/--cache-from
type=registry`; without `--ca-file`, or with a wrong auth file, each is a clear error (no
traceback). And a plain-HTTP registry on a TEST-NET address added to lo (not loopback to us),
which only `--tls-verify=false` lets a build reach (plain HTTP is otherwise loopback only).
Also: the remote-blob records those transfers leave behind pass `check`, and `prune` removes
them with their layers.
"""

from __future__ import annotations

import base64
import gc
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration import registry_fixture
from tests.integration.builds import (
    Stepbuild,
    assert_clear_error,
    base_image,
    step_lines,
    write_context,
)
from tests.integration.registry_fixture import PASSWORD, USER, RunningRegistry

pytestmark = pytest.mark.root

tls_registry = registry_fixture.tls_registry

EPOCH = ("--build-arg", "SOURCE_DATE_EPOCH=1700000000")
CHILD = 'RUN echo on-top > /top\nRUN cat /top /top > /twice\nCMD ["cat", "/twice"]\n'


@pytest.fixture(scope="module", autouse=True)
def collect_garbage() -> Iterator[None]:
    """Close what the registry processes left open now (test_rootpath checks for leaks)."""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def private_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the real ~/.docker/config.json: credentials only by --authfile."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)


def authfile(directory: Path, host: str, password: str = PASSWORD) -> str:
    path = directory / f"auth-{password}.json"
    token = base64.b64encode(f"{USER}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return str(path)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("build-registry-flags")


@pytest.fixture(scope="module")
def flags(work: Path, tls_registry: RunningRegistry) -> tuple[str, ...]:
    """The connection flags the TLS registry needs: --ca-file first, then --authfile (so
    `flags[2:]` is the auth file alone)."""
    return ("--ca-file", str(tls_registry.ca_file),
            "--authfile", authfile(work, tls_registry.host))


@pytest.fixture(scope="module")
def tls_base(work: Path, tls_registry: RunningRegistry, flags: tuple[str, ...]) -> str:
    """The busybox base, pushed to the TLS registry; its reference."""
    sb = Stepbuild(work / "publisher")
    base_image(sb, work, *EPOCH)
    ref = f"{tls_registry.host}/flags/base:1"
    sb("push", "-q", *flags, "base", ref)
    return ref


def child_context(directory: Path, base: str) -> Path:
    return write_context(directory, f"FROM {base}\n{CHILD}")


# --- the TLS + htpasswd registry ---------------------------------------------------------------


def test_from_the_tls_registry_with_ca_file_and_authfile(
        tls_base: str, flags: tuple[str, ...], tmp_path: Path) -> None:
    sb = Stepbuild(tmp_path / "store")
    built = sb.build(child_context(tmp_path / "ctx", tls_base), "-t", "child", *flags)
    assert f"pulled {tls_base}@sha256:" in built.stderr
    assert sb.run("child") == "on-top\non-top\n"
    again = sb.build(child_context(tmp_path / "ctx", tls_base), "-t", "child", "--pull=always",
                     *flags)  # the manifest fetched again, through the same connection
    assert "already present" in again.stderr and again.stdout == built.stdout


def test_from_the_tls_registry_without_ca_file_or_with_a_wrong_authfile_fails_clearly(
        tls_base: str, flags: tuple[str, ...], tmp_path: Path, work: Path) -> None:
    sb = Stepbuild(tmp_path / "store")
    context = child_context(tmp_path / "ctx", tls_base)
    result = sb.build(context, *flags[2:], check=False)
    assert_clear_error(result, 1, "Stepfile:1", "certificate not trusted", "--ca-file")
    host = tls_base.split("/", 1)[0]
    wrong = authfile(work, host, "not-the-password")
    result = sb.build(context, "--ca-file", flags[1], "--authfile", wrong, check=False)
    assert_clear_error(result, 1, "Stepfile:1", "authentication failed")
    result = sb.build(context, "--ca-file", flags[1], check=False)  # no credentials at all
    assert_clear_error(result, 1, "Stepfile:1", "authentication required")
    assert sb("images").stdout.splitlines()[1:] == []


def test_build_push_to_the_tls_registry_uses_the_flags(
        tls_base: str, flags: tuple[str, ...], tls_registry: RunningRegistry,
        tmp_path: Path) -> None:
    sb = Stepbuild(tmp_path / "store")
    ref = f"{tls_registry.host}/flags/pushed:1"
    context = child_context(tmp_path / "ctx", tls_base)
    no_ca = flags[2:]
    result = sb.build(context, "--push", "-t", ref, *no_ca, check=False)
    assert_clear_error(result, 1, "certificate not trusted")  # FROM fails first

    sb.build(context, "-t", "child", *flags)  # base pulled: now only the push needs TLS
    assert_clear_error(sb.build(context, "--push", "-t", ref, *no_ca, check=False), 1,
                       "certificate not trusted")
    built = sb.build(context, "--push", "-t", ref, *flags)
    assert f"pushed {ref}@sha256:" in built.stderr
    resp = requests.get(f"{tls_registry.url}/v2/flags/pushed/manifests/1",
                        auth=(USER, PASSWORD), verify=tls_registry.ca_file, timeout=10,
                        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert resp.status_code == 200
    fresh = Stepbuild(tmp_path / "fresh")
    fresh("pull", "-q", *flags, ref)
    assert fresh.run(ref) == "on-top\non-top\n"


def test_registry_cache_on_the_tls_registry_uses_the_flags(
        tls_base: str, flags: tuple[str, ...], tls_registry: RunningRegistry,
        tmp_path: Path) -> None:
    cache = f"type=registry,ref={tls_registry.host}/flags/cache:child"
    a = Stepbuild(tmp_path / "a")
    context = child_context(tmp_path / "ctx-a", tls_base)
    a.build(context, "-t", "child", *flags)
    no_ca = flags[2:]
    result = a.build(context, "--cache-to", cache, *no_ca, check=False)
    assert_clear_error(result, 1, "certificate not trusted")
    a.build(context, "--cache-to", cache, *flags)

    b = Stepbuild(tmp_path / "b")  # an empty store: base, then both RUN steps from the cache
    built = b.build(child_context(tmp_path / "ctx-b", tls_base), "-t", "child",
                    "--cache-from", cache, *flags)
    assert step_lines(built.stderr)[-2:] == ["CACHED", "CACHED"], built.stderr
    assert "warning" not in built.stderr
    assert b.run("child") == "on-top\non-top\n"


def test_remote_blob_records_pass_check_and_go_with_their_layers(
        tls_base: str, flags: tuple[str, ...], tmp_path: Path) -> None:
    sb = Stepbuild(tmp_path / "store")
    sb.build(child_context(tmp_path / "ctx", tls_base), "-t", "child", *flags)
    records = sb.root / "remote-blobs"
    assert len(list(records.iterdir())) == 2  # the base's layer and config
    assert sb("check").stdout == "store is consistent\n"
    (records / f"{'0' * 64}.json").write_text("{")
    result = sb("check", check=False)
    assert result.returncode == 1
    problems, hint = result.stdout.splitlines()
    assert problems == f"remote-blobs/{'0' * 64}.json: not a valid remote-blob record"
    assert hint.startswith("`stepbuild check --repair`")

    sb("rmi", "child")
    sb("rmi", tls_base)
    assert "3 remote-blob records" in sb("prune", "-f", "--filter", "until=0s").stdout
    assert list(records.iterdir()) == []
    assert sb("check").stdout == "store is consistent\n"


# --- plain HTTP off loopback -------------------------------------------------------------------


# TEST-NET-1 (RFC 5737): never routed, so adding it to lo for the module's duration cannot
# collide with a real network, and it is not loopback in stepbuild's sense (127.0.0.0/8).
OFF_LOOPBACK = "192.0.2.123"


@pytest.fixture(scope="module")
def off_loopback_address() -> Iterator[str]:
    """OFF_LOOPBACK on lo, removed afterwards: every machine has a non-loopback address."""
    subprocess.run(["ip", "addr", "replace", f"{OFF_LOOPBACK}/32", "dev", "lo"], check=True)
    try:
        yield OFF_LOOPBACK
    finally:
        subprocess.run(["ip", "addr", "del", f"{OFF_LOOPBACK}/32", "dev", "lo"], check=False)


@pytest.fixture(scope="module")
def remote_http_registry(tmp_path_factory: pytest.TempPathFactory,
                         off_loopback_address: str) -> Iterator[str]:
    """A plain-HTTP registry without auth, listening on a non-loopback address: its host."""
    address = off_loopback_address
    registry_fixture.require_tools()
    workdir = tmp_path_factory.mktemp("registry-off-loopback")
    host = f"{address}:{registry_fixture.free_port()}"
    config = {"version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
              "storage": {"filesystem": {"rootdirectory": str(workdir / "storage")}},
              "http": {"addr": host, "secret": "off-loopback"}}
    (workdir / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    with open(workdir / "registry.log", "wb") as log:
        process = subprocess.Popen([registry_fixture.REGISTRY_BIN, "serve",
                                    str(workdir / "config.yml")], stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        _wait_for(f"http://{host}/v2/", process)
        yield host
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_for(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            time.sleep(0.05)
    pytest.fail(f"docker-registry did not start on {url}")


def test_tls_verify_false_reaches_a_plain_http_registry_off_loopback(
        remote_http_registry: str, work: Path, tmp_path: Path) -> None:
    publisher = Stepbuild(work / "publisher")
    base_image(publisher, work, *EPOCH)
    ref = f"{remote_http_registry}/plain/base:1"
    assert_clear_error(publisher("push", "base", ref, check=False), 1, remote_http_registry)
    publisher("push", "-q", "--tls-verify=false", "base", ref)

    sb = Stepbuild(tmp_path / "store")
    context = child_context(tmp_path / "ctx", ref)
    result = sb.build(context, check=False)  # HTTPS only, and the registry speaks HTTP
    assert_clear_error(result, 1, "Stepfile:1", remote_http_registry)
    pushed = f"{remote_http_registry}/plain/child:1"
    cache = f"type=registry,ref={remote_http_registry}/plain/cache:1"
    built = sb.build(context, "--tls-verify=false", "-t", pushed, "--push", "--cache-to", cache)
    assert f"pulled {ref}@sha256:" in built.stderr and f"pushed {pushed}@sha256:" in built.stderr
    assert sb.run(pushed) == "on-top\non-top\n"

    other = Stepbuild(tmp_path / "other")
    again = other.build(context, "--tls-verify=false", "--cache-from", cache)
    assert step_lines(again.stderr)[-2:] == ["CACHED", "CACHED"], again.stderr
