"""The registry client against a real registry: Debian's docker-registry on 127.0.0.1.

Three registries per module (registry_fixture.py): plain HTTP without auth, HTTPS with a test
CA and htpasswd Basic auth, and token (Bearer) auth. Every test uses its own repositories.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from stepbuild.distribution.auth import Credentials, load_credentials, login
from stepbuild.distribution.client import Registry
from stepbuild.errors import DigestMismatch, RegistryError
from stepbuild.oci.digest import sha256_bytes, sha256_file
from stepbuild.oci.documents import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    Index,
    Manifest,
)
from tests.integration import registry_fixture
from tests.integration.registry_fixture import PASSWORD, USER, RunningRegistry

# The fixtures, by assignment (an import of them would read as unused to linters).
plain_registry = registry_fixture.plain_registry
tls_registry = registry_fixture.tls_registry
token_registry = registry_fixture.token_registry

KINDS = ["plain", "tls", "token"]


@pytest.fixture(params=KINDS)
def any_registry(request: pytest.FixtureRequest) -> RunningRegistry:
    running: RunningRegistry = request.getfixturevalue(f"{request.param}_registry")
    return running


def connect(running: RunningRegistry, **kwargs: object) -> Registry:
    """A client with the right CA and credentials for `running`."""
    auth = Credentials(USER, PASSWORD) if running.users else None
    kwargs.setdefault("auth", auth)
    kwargs.setdefault("ca_file", running.ca_file)
    return Registry(running.host, backoff=0.01, **kwargs)  # type: ignore[arg-type]


@dataclass
class Image:
    """A small but real image: two gzipped layer tars, a config, a manifest, as files."""

    layers: list[tuple[Path, str, int]]
    config: bytes
    manifest: bytes
    media_type: str = MEDIA_TYPE_MANIFEST


def make_image(workdir: Path, *, docker: bool = False, big: int = 3 << 20) -> Image:
    workdir.mkdir(parents=True, exist_ok=True)
    layers = []
    for i, size in enumerate((1000, big)):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            info = tarfile.TarInfo(f"file{i}")
            info.size = size
            tar.addfile(info, io.BytesIO(os.urandom(size)))
        path = workdir / f"layer{i}.tar.gz"
        path.write_bytes(gzip.compress(raw.getvalue(), mtime=0))
        digest, length = sha256_file(path)
        layers.append((path, digest, length))
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers",
                         "diff_ids": []}}).encode()
    layer_type = DOCKER_LAYER_GZIP if docker else MEDIA_TYPE_LAYER_GZIP
    manifest = Manifest(
        config=Descriptor(DOCKER_CONFIG if docker else MEDIA_TYPE_CONFIG,
                          sha256_bytes(config), len(config)),
        layers=tuple(Descriptor(layer_type, d, n) for _, d, n in layers),
        media_type=DOCKER_MANIFEST if docker else MEDIA_TYPE_MANIFEST,
    )
    return Image(layers, config, manifest.to_bytes(), manifest.media_type)


def push(reg: Registry, repo: str, tag: str, image: Image, workdir: Path,
         chunk_size: int | None = None) -> str:
    for path, digest, size in image.layers:
        reg.put_blob(repo, digest, size, path, chunk_size=chunk_size)
    config_path = workdir / "config.json"
    config_path.write_bytes(image.config)
    reg.put_blob(repo, sha256_bytes(image.config), len(image.config), config_path)
    return reg.put_manifest(repo, tag, image.manifest, image.media_type)


@pytest.mark.parametrize("chunk_size", [None, 1 << 20], ids=["monolithic", "chunked"])
def test_push_and_pull_back_identical(
    any_registry: RunningRegistry, tmp_path: Path, chunk_size: int | None
) -> None:
    image = make_image(tmp_path)
    repo = f"it/roundtrip-{'chunked' if chunk_size else 'mono'}"
    with connect(any_registry) as reg:
        reg.ping()
        assert reg.has_blob(repo, image.layers[1][1]) is None
        digest = push(reg, repo, "v1", image, tmp_path, chunk_size)
        assert digest == sha256_bytes(image.manifest)
        data, media_type, got = reg.get_manifest(repo, "v1")
        assert (data, media_type, got) == (image.manifest, MEDIA_TYPE_MANIFEST, digest)
        assert reg.get_manifest(repo, digest)[0] == image.manifest
        assert reg.head_manifest(repo, "v1") == (digest, MEDIA_TYPE_MANIFEST,
                                                 len(image.manifest))
        for i, (path, layer_digest, size) in enumerate(image.layers):
            assert reg.has_blob(repo, layer_digest) == size
            out = tmp_path / f"pulled{i}"
            reg.get_blob(repo, layer_digest, out, size=size)
            assert out.read_bytes() == path.read_bytes()
        out = tmp_path / "pulled-config"
        reg.get_blob(repo, sha256_bytes(image.config), out)
        assert out.read_bytes() == image.config
        assert reg.list_tags(repo) == ["v1"]
        push(reg, repo, "v2", image, tmp_path)  # blobs already there: HEAD, no upload
        assert sorted(reg.list_tags(repo)) == ["v1", "v2"]


def test_progress_is_reported_per_transfer(plain_registry: RunningRegistry,
                                           tmp_path: Path) -> None:
    image = make_image(tmp_path)
    path, digest, size = image.layers[1]
    events: list[tuple[str, int, int]] = []
    with connect(plain_registry) as reg:
        reg.put_blob("it/progress", digest, size, path, on_progress=lambda *e: events.append(e))
        assert events[-1] == (digest, size, size)
        assert len(events) >= 3 and all(d == digest and t == size for d, _, t in events)
        events.clear()
        reg.get_blob("it/progress", digest, tmp_path / "out",
                     on_progress=lambda *e: events.append(e))
        assert events[-1] == (digest, size, size)
        assert [done for _, done, _ in events] == sorted(done for _, done, _ in events)


def test_docker_schema2_and_index_media_types(plain_registry: RunningRegistry,
                                              tmp_path: Path) -> None:
    image = make_image(tmp_path, docker=True, big=1000)
    with connect(plain_registry) as reg:
        digest = push(reg, "it/docker", "v1", image, tmp_path)
        assert reg.get_manifest("it/docker", "v1")[1:] == (DOCKER_MANIFEST, digest)
        index = Index(manifests=(Descriptor(DOCKER_MANIFEST, digest, len(image.manifest),
                                            platform={"architecture": "amd64", "os": "linux"}),))
        index_digest = reg.put_manifest("it/docker", "multi", index.to_bytes(), MEDIA_TYPE_INDEX)
        data, media_type, got = reg.get_manifest("it/docker", "multi")
        assert (data, media_type, got) == (index.to_bytes(), MEDIA_TYPE_INDEX, index_digest)


def test_skopeo_agrees_with_what_we_pushed(plain_registry: RunningRegistry,
                                           tmp_path: Path) -> None:
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo missing: apt-get install skopeo")
    image = make_image(tmp_path, big=1000)
    with connect(plain_registry) as reg:
        digest = push(reg, "it/skopeo", "v1", image, tmp_path)
    done = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                           f"docker://{plain_registry.host}/it/skopeo:v1"],
                          capture_output=True, check=True, timeout=60)
    assert sha256_bytes(done.stdout) == digest


def test_cross_repository_mount(any_registry: RunningRegistry, tmp_path: Path) -> None:
    image = make_image(tmp_path, big=1000)
    with connect(any_registry) as reg:
        push(reg, "it/mount-base", "v1", image, tmp_path)
        _, digest, size = image.layers[1]
        assert reg.has_blob("it/mount-app", digest) is None
        assert reg.mount_blob("it/mount-app", digest, "it/mount-base") is True
        assert reg.has_blob("it/mount-app", digest) == size
        assert reg.mount_blob("it/mount-other", sha256_bytes(b"absent"), "it/mount-base") is False
        reg.get_blob("it/mount-app", digest, tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == image.layers[1][0].read_bytes()


@pytest.mark.parametrize("kind", ["tls", "token"])
def test_wrong_password_is_a_401(request: pytest.FixtureRequest, kind: str) -> None:
    running: RunningRegistry = request.getfixturevalue(f"{kind}_registry")
    with connect(running, auth=Credentials(USER, "wrong")) as reg:
        with pytest.raises(RegistryError) as info:
            reg.ping()
        assert info.value.status == 401 and not info.value.temporary
        assert "authentication failed" in info.value.message
        with pytest.raises(RegistryError, match="authentication"):
            reg.list_tags("it/anything")


@pytest.mark.parametrize("kind", ["tls", "token"])
def test_no_credentials_means_authentication_required(request: pytest.FixtureRequest,
                                                      kind: str, tmp_path: Path) -> None:
    running: RunningRegistry = request.getfixturevalue(f"{kind}_registry")
    with connect(running, auth=None) as reg, pytest.raises(RegistryError) as info:
        reg.get_blob("it/x", sha256_bytes(b"x"), tmp_path / "out")
    assert info.value.status == 401 and "authentication required" in info.value.message
    assert not (tmp_path / "out").exists()


def test_unknown_repository_tag_and_blob_are_404(any_registry: RunningRegistry,
                                                 tmp_path: Path) -> None:
    with connect(any_registry) as reg:
        with pytest.raises(RegistryError) as info:
            reg.list_tags("it/no-such-repo")
        assert (info.value.status, info.value.codes) == (404, ("NAME_UNKNOWN",))
        assert "not found" in info.value.message
        push(reg, "it/known", "v1", make_image(tmp_path, big=100), tmp_path)
        with pytest.raises(RegistryError) as info:
            reg.get_manifest("it/known", "no-such-tag")
        assert (info.value.status, info.value.codes) == (404, ("MANIFEST_UNKNOWN",))
        assert "it/known:no-such-tag" in info.value.message
        assert reg.head_manifest("it/known", "no-such-tag") is None
        assert reg.has_blob("it/known", sha256_bytes(b"nope")) is None
        with pytest.raises(RegistryError) as info:
            reg.get_blob("it/known", sha256_bytes(b"nope"), tmp_path / "out")
        assert info.value.status == 404 and not (tmp_path / "out").exists()


def test_bearer_tokens_carry_the_scopes(token_registry: RunningRegistry,
                                        tmp_path: Path) -> None:
    image = make_image(tmp_path, big=1000)
    with connect(token_registry) as reg:
        push(reg, "it/scoped", "v1", image, tmp_path)
        reg.get_manifest("it/scoped", "v1")
        assert reg.mount_blob("it/scoped-copy", image.layers[0][1], "it/scoped")
    issued = token_registry.token_requests
    assert "repository:it/scoped:pull,push" in issued
    assert "repository:it/scoped:pull" in issued
    assert "repository:it/scoped-copy:pull,push repository:it/scoped:pull" in issued
    assert issued.count("repository:it/scoped:pull,push") == 1  # cached


def test_tls_is_verified_with_the_test_ca(tls_registry: RunningRegistry) -> None:
    with connect(tls_registry, ca_file=None) as reg, pytest.raises(RegistryError) as info:
        reg.ping()
    assert "certificate" in info.value.message and "--ca-file" in (info.value.hint or "")
    with connect(tls_registry, ca_file=None, tls_verify=False) as reg:
        reg.ping()
    with connect(tls_registry) as reg:
        reg.ping()


def test_plain_http_only_where_allowed(plain_registry: RunningRegistry) -> None:
    with connect(plain_registry, insecure_http=False) as reg, \
            pytest.raises(RegistryError, match="TLS"):
        reg.ping()
    with connect(plain_registry) as reg:  # 127.0.0.1 without TLS: HTTP, as docker does
        reg.ping()
    local = plain_registry.host.replace("127.0.0.1", "localhost")
    with Registry(local) as reg:
        reg.ping()


def test_credentials_from_an_auth_file(tls_registry: RunningRegistry, tmp_path: Path) -> None:
    authfile = tmp_path / "auth.json"
    login(tls_registry.host, Credentials(USER, PASSWORD), authfile=authfile)
    creds = load_credentials(tls_registry.host, "it/x", authfile=authfile)
    with Registry(tls_registry.host, auth=creds, ca_file=tls_registry.ca_file) as reg:
        reg.ping()


def test_parallel_transfers_with_one_client(token_registry: RunningRegistry,
                                            tmp_path: Path) -> None:
    blobs = []
    for i in range(8):
        data = os.urandom(300_000 + i)
        path = tmp_path / f"in{i}"
        path.write_bytes(data)
        blobs.append((path, sha256_bytes(data), len(data)))
    with connect(token_registry) as reg, ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda b: reg.put_blob("it/parallel", b[1], b[2], b[0]), blobs))
        list(pool.map(lambda ib: reg.get_blob("it/parallel", ib[1][1], tmp_path / f"out{ib[0]}",
                                              size=ib[1][2]), enumerate(blobs)))
    for i, (path, _, _) in enumerate(blobs):
        assert (tmp_path / f"out{i}").read_bytes() == path.read_bytes()


def test_pushing_wrong_content_for_a_digest_is_refused(plain_registry: RunningRegistry,
                                                       tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"actual content")
    claimed = sha256_bytes(b"other content!")
    with connect(plain_registry) as reg:
        with pytest.raises(DigestMismatch):
            reg.put_blob("it/bad", claimed, len(b"other content!"), path)
        with pytest.raises(DigestMismatch):
            reg.put_blob("it/bad", claimed, len(b"other content!"), path, chunk_size=4)
        assert reg.has_blob("it/bad", claimed) is None
