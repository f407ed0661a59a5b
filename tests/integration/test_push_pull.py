"""push, pull, tag, login/logout, FROM of a registry reference and build --push, for real.

Against Debian's docker-registry (registry_fixture.py: plain HTTP, TLS + htpasswd, token auth)
and through the real CLI. Proofs: push → pull into a fresh store gives the same local manifest
digest (and the same registry digest when pushed again), the image runs, skopeo sees what we
pushed; a second push uploads nothing; a push to another repository mounts every blob, and a
layer known only to be in the registry is mounted without being downloaded; credentials from
`login` (0600) work and `logout` removes them; wrong credentials, unknown repositories and tags,
and --pull=never with a missing base are clear errors. Every test uses repositories of its own.
"""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from stepbuild.oci.digest import sha256_bytes
from stepbuild.store.store import Store
from tests.integration import registry_fixture
from tests.integration.builds import (
    Stepbuild,
    assert_clear_error,
    base_image,
    small_tmpfs,
    write_context,
)
from tests.integration.registry_fixture import PASSWORD, USER, RunningRegistry

pytestmark = pytest.mark.root

plain_registry = registry_fixture.plain_registry
tls_registry = registry_fixture.tls_registry
token_registry = registry_fixture.token_registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = {"Accept": OCI_MANIFEST}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("push-pull")


@pytest.fixture(scope="module")
def source(work: Path) -> Stepbuild:
    """Store A: the busybox `base`, and `app` on it (a file added, one deleted: a whiteout)."""
    sb = Stepbuild(work / "a")
    base_image(sb, work)
    context = write_context(work / "app", "FROM base\nRUN echo made > /made && rm /etc/group\n"
                                          'CMD ["cat", "/made"]\n')
    sb.build(context, "-q", "-t", "app")
    return sb


@pytest.fixture(autouse=True)
def private_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads or writes the real ~/.docker/config.json."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    return tmp_path / "docker-config" / "config.json"


@pytest.fixture()
def fresh(tmp_path: Path) -> Stepbuild:
    return Stepbuild(tmp_path / "fresh")


def local_digest(sb: Stepbuild, image: str) -> str:
    return str(json.loads(sb("inspect", image).stdout)["digest"])


def remote_manifest(registry: RunningRegistry, repo: str, ref: str) -> tuple[bytes, str]:
    resp = requests.get(f"{registry.url}/v2/{repo}/manifests/{ref}", headers=ACCEPT, timeout=10,
                        verify=registry.ca_file or True)
    resp.raise_for_status()
    return resp.content, resp.headers["Docker-Content-Digest"]


def outcomes(stderr: str) -> list[str]:
    """The final state of each blob line of a push: pushed, exists, mounted, compressing."""
    return [line.split(": ", 1)[1].split()[0] for line in stderr.splitlines()
            if ": " in line and not line.startswith(("pushed ", "pulled ", "stepbuild"))]


def assert_clean(sb: Stepbuild) -> None:
    result = sb("check", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list((sb.root / "tmp").iterdir()) == []


# --- push and pull -----------------------------------------------------------------------------


def test_push_then_pull_into_a_fresh_store_round_trips(
        source: Stepbuild, fresh: Stepbuild, plain_registry: RunningRegistry) -> None:
    ref = f"{plain_registry.host}/round/app:1"
    pushed = source("push", "app", ref)
    digest = pushed.stdout.strip()
    data, said = remote_manifest(plain_registry, "round/app", "1")
    assert said == digest
    manifest = json.loads(data)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+gzip"}

    inspected = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"],
                               capture_output=True, text=True, check=True, timeout=60)
    seen = json.loads(inspected.stdout)
    assert seen["Digest"] == digest
    assert seen["Layers"] == [layer["digest"] for layer in manifest["layers"]]
    assert (seen["Os"], seen["Architecture"]) == ("linux", "amd64")
    raw = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--config", "--raw",
                          f"docker://{ref}"], capture_output=True, check=True, timeout=60)
    assert raw.stdout == (source.root / "blobs" / "sha256" /
                          manifest["config"]["digest"].removeprefix("sha256:")).read_bytes()

    pulled = fresh("pull", ref)
    assert pulled.stdout.strip() == digest
    assert local_digest(fresh, ref) == local_digest(source, "app")  # the same image, locally
    assert fresh.run(ref) == "made\n"
    gone = fresh.run(ref, "sh", "-c", "test -e /etc/group && echo there || echo gone")
    assert gone == "gone\n"  # the whiteout came through
    assert_clean(fresh)

    # The pulled store kept the registry's blobs: pushing again sends those very bytes.
    again = fresh("push", ref, f"{plain_registry.host}/round/copy:1")
    assert again.stdout.strip() == digest
    assert "compressing" not in again.stderr
    assert set(outcomes(again.stderr)) == {"mounted"}


def test_a_second_push_uploads_nothing(source: Stepbuild,
                                       plain_registry: RunningRegistry) -> None:
    ref = f"{plain_registry.host}/twice/app:1"
    first = source("push", "app", ref)
    second = source("push", "app", ref)
    assert first.stdout == second.stdout
    assert set(outcomes(second.stderr)) == {"exists"}
    assert "manifest unchanged" in second.stderr and "uploaded" not in second.stderr


def test_a_push_to_another_repository_mounts_every_blob(
        source: Stepbuild, plain_registry: RunningRegistry) -> None:
    first = source("push", "app", f"{plain_registry.host}/mount/one:1")
    second = source("push", "app", f"{plain_registry.host}/mount/two:1")
    lines = [line for line in second.stderr.splitlines() if "mounted from" in line]
    assert len(lines) == 3  # layers and config: the last repository pushed to is tried first
    assert all(line.endswith("mounted from mount/one") for line in lines)
    assert "(3 mounted)" in second.stderr
    assert second.stdout == first.stdout


def test_a_layer_only_known_to_be_in_the_registry_is_mounted_not_downloaded(
        source: Stepbuild, fresh: Stepbuild, plain_registry: RunningRegistry,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The team-cache case: the store knows which blob holds a layer and where, but has not
    downloaded it; pushing to the same registry mounts it."""
    from stepbuild.distribution.client import Registry
    from stepbuild.distribution.connection import Connection
    from stepbuild.distribution.push import push

    ref = f"{plain_registry.host}/lazy/base:1"
    source("push", "base", ref)
    fresh("pull", ref)
    store = Store(fresh.root)
    for record in (fresh.root / "compressed").iterdir():  # the layer was never downloaded:
        blob = json.loads(record.read_text())["digest"].removeprefix("sha256:")
        (fresh.root / "blobs" / "sha256" / blob).unlink()  # no compressed blob,
        (fresh.root / "blobs" / "sha256" / record.name.split(".")[0]).unlink()  # no layer tar
        record.unlink()
    calls: dict[str, int] = {"get_blob": 0, "put_blob": 0, "mount_blob": 0}

    def counting(name: str) -> Any:
        original = getattr(Registry, name)

        def wrapper(self: Registry, *args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return original(self, *args, **kwargs)
        return wrapper

    for name in calls:
        monkeypatch.setattr(Registry, name, counting(name))
    result = push(store, ref, f"{plain_registry.host}/lazy/elsewhere:1",
                  connection=Connection())
    assert calls == {"get_blob": 0, "put_blob": 0, "mount_blob": 2}
    assert [o for _, o in result.blobs] == ["mounted", "mounted"]
    assert list((fresh.root / "compressed").iterdir()) == []  # nothing was recompressed


def test_zstd_push_pulls_back(source: Stepbuild, fresh: Stepbuild,
                              plain_registry: RunningRegistry) -> None:
    ref = f"{plain_registry.host}/zstd/app:1"
    digest = source("push", "--compression", "zstd", "-q", "app", ref).stdout.strip()
    manifest = json.loads(remote_manifest(plain_registry, "zstd/app", "1")[0])
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"}
    assert fresh("pull", "-q", ref).stdout.strip() == digest
    assert fresh.run(ref) == "made\n"


def test_pull_picks_this_platform_from_an_index(source: Stepbuild, fresh: Stepbuild,
                                                plain_registry: RunningRegistry) -> None:
    ref = f"{plain_registry.host}/multi/app"
    digest = source("push", "-q", "app", f"{ref}:amd64").stdout.strip()
    size = len(remote_manifest(plain_registry, "multi/app", "amd64")[0])
    entry = {"mediaType": OCI_MANIFEST, "digest": digest, "size": size}
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{**entry, "platform": {"os": "linux",
                                                             "architecture": "arm64"}},
                                      {**entry, "platform": {"os": "linux",
                                                             "architecture": "amd64"}}]})
    resp = requests.put(f"{plain_registry.url}/v2/multi/app/manifests/latest", data=index,
                        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
                        timeout=10)
    assert resp.status_code == 201, resp.text
    pulled = fresh("pull", ref)
    assert pulled.stdout.strip() == resp.headers["Docker-Content-Digest"]
    assert fresh.run(f"{ref}:latest") == "made\n"  # tagged in its normalised form


def test_docker_media_types_pull_to_the_same_image(source: Stepbuild, fresh: Stepbuild,
                                                   plain_registry: RunningRegistry) -> None:
    """The same blobs under a Docker schema 2 manifest (what `docker push` writes)."""
    digest = source("push", "-q", "app", f"{plain_registry.host}/docker/app:oci").stdout.strip()
    manifest = json.loads(remote_manifest(plain_registry, "docker/app", digest)[0])
    manifest["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json"
    manifest["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json"
    for layer in manifest["layers"]:
        layer["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    resp = requests.put(f"{plain_registry.url}/v2/docker/app/manifests/v2",
                        data=json.dumps(manifest), timeout=10,
                        headers={"Content-Type": manifest["mediaType"]})
    assert resp.status_code == 201, resp.text
    ref = f"{plain_registry.host}/docker/app:v2"
    assert fresh("pull", ref).stdout.strip() == resp.headers["Docker-Content-Digest"]
    assert local_digest(fresh, ref) == local_digest(source, "app")
    assert fresh.run(ref) == "made\n"


def test_an_image_without_layers_round_trips(source: Stepbuild, fresh: Stepbuild,
                                             plain_registry: RunningRegistry,
                                             tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", "FROM scratch\nENV ONLY=config\n")
    source.build(context, "-q", "-t", "empty")
    ref = f"{plain_registry.host}/empty/image:1"
    digest = source("push", "-q", "empty", ref).stdout.strip()
    assert fresh("pull", "-q", ref).stdout.strip() == digest
    assert local_digest(fresh, ref) == local_digest(source, "empty")
    assert_clean(fresh)


def test_a_corrupt_blob_in_the_registry_is_refused(source: Stepbuild, fresh: Stepbuild,
                                                   plain_registry: RunningRegistry,
                                                   tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", f"FROM base\nRUN echo {tmp_path.name} > /u\n")
    source.build(context, "-q", "-t", "unique")
    ref = f"{plain_registry.host}/corrupt/app:1"
    source("push", "-q", "unique", ref)
    manifest = json.loads(remote_manifest(plain_registry, "corrupt/app", "1")[0])
    top = manifest["layers"][-1]["digest"].removeprefix("sha256:")
    data = (plain_registry.storage / "docker/registry/v2/blobs/sha256" / top[:2] / top / "data")
    data.write_bytes(bytes(len(data.read_bytes())))  # same size, other bytes
    result = fresh("pull", ref, check=False)
    assert_clear_error(result, 1, "digest mismatch", top)
    assert fresh("images").stdout.splitlines()[1:] == []
    assert_clean(fresh)


@pytest.fixture()
def small_disk(tmp_path: Path, private_mount_ns: None) -> Iterator[Path]:
    """A 4 MiB tmpfs (in the test session's private mount namespace, which the CLI inherits)."""
    with small_tmpfs(tmp_path / "small", "4m") as small:
        yield small


def test_a_full_disk_during_pull_leaves_the_store_intact(
        published_base: str, small_disk: Path) -> None:
    store = Stepbuild(small_disk / "store")  # busybox: ~1 MB gzip, 2 MB tar, 2 MB unpacked
    result = store("pull", published_base, check=False)
    assert_clear_error(result, 1, "No space left on device")
    assert store("images").stdout.splitlines()[1:] == []
    assert_clean(store)


def test_tag_then_push_by_the_new_name(source: Stepbuild,
                                       plain_registry: RunningRegistry) -> None:
    name = f"{plain_registry.host}/tagged/app:v2"
    source("tag", "app", name)
    assert local_digest(source, name) == local_digest(source, "app")
    assert source("push", "-q", name).stdout.strip() == remote_manifest(
        plain_registry, "tagged/app", "v2")[1]
    assert_clear_error(source("tag", "no-such-image", "x:1", check=False), 1, "no-such-image")


def test_unknown_repository_or_tag_is_a_clear_error(
        source: Stepbuild, fresh: Stepbuild, plain_registry: RunningRegistry) -> None:
    result = fresh("pull", f"{plain_registry.host}/nobody/here:1", check=False)
    assert_clear_error(result, 1, "not found")
    source("push", "-q", "app", f"{plain_registry.host}/known/app:1")
    result = fresh("pull", f"{plain_registry.host}/known/app:nosuchtag", check=False)
    assert_clear_error(result, 1, "known/app:nosuchtag", "not found")
    assert fresh("images").stdout.splitlines()[1:] == []
    assert_clean(fresh)
    assert_clear_error(fresh("push", "nothing-here", f"{plain_registry.host}/x/y:1",
                             check=False), 1, "nothing-here")


# --- credentials -------------------------------------------------------------------------------


def test_login_push_logout_against_tls_and_htpasswd(
        source: Stepbuild, tls_registry: RunningRegistry, private_auth: Path,
        tmp_path: Path) -> None:
    host, ca = tls_registry.host, str(tls_registry.ca_file)
    ref = f"{host}/secure/app:1"
    assert_clear_error(source("push", "--ca-file", ca, "app", ref, check=False), 1,
                       "authentication required")

    done = source("login", "--ca-file", ca, "-u", USER, "--password-stdin", host,
                  input=PASSWORD + "\n")
    assert "Login Succeeded" in done.stdout
    assert stat.S_IMODE(private_auth.stat().st_mode) == 0o600
    entry = json.loads(private_auth.read_text())["auths"][host]
    assert base64.b64decode(entry["auth"]).decode() == f"{USER}:{PASSWORD}"

    digest = source("push", "-q", "--ca-file", ca, "app", ref).stdout.strip()
    assert digest.startswith("sha256:")
    certs = tmp_path / "certs"  # skopeo reads *.crt there (and refuses a lone *.key)
    certs.mkdir()
    shutil.copy(ca, certs / "ca.crt")
    inspected = subprocess.run(["skopeo", "inspect", "--cert-dir", str(certs),
                                "--creds", f"{USER}:{PASSWORD}", "--raw", f"docker://{ref}"],
                               capture_output=True, check=True, timeout=60)
    assert sha256_bytes(inspected.stdout) == digest

    source("logout", host)
    assert host not in json.loads(private_auth.read_text())["auths"]
    assert_clear_error(source("push", "--ca-file", ca, "app", ref, check=False), 1,
                       "authentication required")
    assert_clear_error(source("logout", host, check=False), 1, "not logged in")


@pytest.mark.parametrize("kind", ["tls", "token"])
def test_wrong_credentials_are_a_clear_error(request: pytest.FixtureRequest, source: Stepbuild,
                                            private_auth: Path, kind: str) -> None:
    running: RunningRegistry = request.getfixturevalue(f"{kind}_registry")
    ca = ["--ca-file", running.ca_file] if running.ca_file else []
    result = source("login", *ca, "-u", USER, "--password-stdin", running.host,
                    input="not-the-password", check=False)
    assert_clear_error(result, 1, "authentication failed")
    assert not private_auth.exists()  # nothing stored
    private_auth.parent.mkdir(parents=True, exist_ok=True)
    private_auth.write_text(json.dumps({"auths": {running.host: {
        "auth": base64.b64encode(f"{USER}:wrong".encode()).decode()}}}))
    result = source("push", *ca, "app", f"{running.host}/wrong/app:1", check=False)
    assert_clear_error(result, 1, "authentication failed")


def test_token_registry_push_and_pull_with_stored_credentials(
        source: Stepbuild, fresh: Stepbuild, token_registry: RunningRegistry) -> None:
    source("login", "-u", USER, "--password-stdin", token_registry.host, input=PASSWORD)
    ref = f"{token_registry.host}/tokens/app:1"
    digest = source("push", "-q", "app", ref).stdout.strip()
    other = source("push", "app", f"{token_registry.host}/tokens/other:1")
    assert other.stdout.strip() == digest and "(3 mounted)" in other.stderr
    fresh("login", "-u", USER, "--password-stdin", token_registry.host, input=PASSWORD)
    assert fresh("pull", "-q", ref).stdout.strip() == digest
    assert fresh.run(ref) == "made\n"


# --- builds ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def published_base(source: Stepbuild, plain_registry: RunningRegistry) -> str:
    ref = f"{plain_registry.host}/published/base:1"
    source("push", "-q", "base", ref)
    return ref


def test_from_a_registry_reference_pulls_the_base_when_missing(
        fresh: Stepbuild, published_base: str, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", f"FROM {published_base}\nRUN echo on-top > /top\n"
                                              'CMD ["cat", "/top"]\n')
    first = fresh.build(context, "-t", "child")
    assert f"pulled {published_base}@sha256:" in first.stderr
    assert fresh.run("child") == "on-top\n"
    second = fresh.build(context, "-t", "child")
    assert "pulled" not in second.stderr and "CACHED" in second.stderr  # in the store now
    always = fresh("build", "-t", "child", "--pull", str(context))  # docker's form: always
    assert "already present" in always.stderr and "pulled" in always.stderr
    assert always.stdout == second.stdout
    assert_clean(fresh)


def test_pull_never_with_a_missing_base_is_a_clear_error(
        fresh: Stepbuild, published_base: str, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", f"FROM {published_base}\nRUN true\n")
    result = fresh.build(context, "--pull=never", check=False)
    assert_clear_error(result, 1, "Stepfile:1", "--pull=never", published_base)
    missing = write_context(tmp_path / "ctx2", f"FROM {published_base}-nope\n")
    result = fresh.build(missing, check=False)
    assert_clear_error(result, 1, "Stepfile:1", "not found")
    assert fresh("images").stdout.splitlines()[1:] == []


def test_build_push_pushes_the_result(source: Stepbuild, fresh: Stepbuild,
                                      plain_registry: RunningRegistry, tmp_path: Path) -> None:
    ref = f"{plain_registry.host}/built/app:1"
    context = write_context(tmp_path / "ctx", "FROM base\nRUN echo pushed-by-build > /p\n"
                                              'CMD ["cat", "/p"]\n')
    built = source.build(context, "--push", "-t", ref)
    assert f"pushed {ref}@sha256:" in built.stderr
    assert fresh("pull", ref).stdout.strip() == remote_manifest(plain_registry, "built/app",
                                                                "1")[1]
    assert fresh.run(ref) == "pushed-by-build\n"
    assert_clear_error(source.build(context, "--push", check=False), 2, "--push needs")


def test_build_push_gives_the_registrys_digest_to_stdout_iidfile_and_metadata(
        source: Stepbuild, plain_registry: RunningRegistry, tmp_path: Path) -> None:
    """What a pipeline signs and deploys by digest is what the registry holds: after --push,
    stdout, --iidfile and --metadata-file's containerimage.digest are skopeo's digest."""
    ref = f"{plain_registry.host}/built/meta:1"
    context = write_context(tmp_path / "ctx", "FROM base\nRUN echo meta > /m\n")
    iid, meta = tmp_path / "iid", tmp_path / "meta.json"
    built = source.build(context, "--push", "-t", ref, "--iidfile", str(iid),
                         "--metadata-file", str(meta))
    inspected = json.loads(subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True, text=True, check=True).stdout)
    registry_digest = inspected["Digest"]
    assert built.stdout.strip() == registry_digest
    assert iid.read_text() == registry_digest
    metadata = json.loads(meta.read_text())
    local = metadata["stepbuild.local.digest"]
    assert metadata["containerimage.digest"] == registry_digest
    assert metadata["stepbuild.pushed"] == {ref: registry_digest}
    assert metadata["image.name"] == ref
    assert source.run(local, "cat", "/m") == "meta\n"  # the local digest names the image here
    raw_manifest = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                                   f"docker://{ref}"], capture_output=True, text=True,
                                  check=True).stdout
    config_digest = json.loads(raw_manifest)["config"]["digest"]
    assert config_digest == metadata["containerimage.config.digest"]


def test_build_writes_iidfile_and_metadata_without_push_every_time(
        source: Stepbuild, tmp_path: Path) -> None:
    """Without --push the local digest; and a second, all-cached build writes them again (a
    build asked for these files is never replayed from its fingerprint)."""
    context = write_context(tmp_path / "ctx", "FROM base\nRUN echo local > /l\n")
    iid, meta = tmp_path / "iid", tmp_path / "meta.json"
    for _ in range(2):
        iid.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        built = source.build(context, "-t", "meta-local", "--iidfile", str(iid),
                             "--metadata-file", str(meta))
        digest = built.stdout.strip()
        assert iid.read_text() == digest
        metadata = json.loads(meta.read_text())
        assert metadata["containerimage.digest"] == metadata["stepbuild.local.digest"] == digest
        assert metadata["image.name"] == "meta-local" and metadata["stepbuild.pushed"] == {}
    store = Store(source.root)
    desc = store.resolve("meta-local")
    assert desc is not None
    assert metadata["containerimage.config.digest"] == store.manifest(desc).config.digest


@pytest.fixture(autouse=True, scope="module")
def _tools() -> Iterator[None]:
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo missing: apt-get install skopeo")
    yield
