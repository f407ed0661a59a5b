"""Image indexes (issue 15) through the real CLI: run, inspect, history, images, export, load,
push and pull of a two-platform image, against the real registry, skopeo and podman.

The index is made the way a multi-platform build will make it (`Store.put_index` of one
manifest per platform): two images on the busybox base (the base layer shared), each with a
file naming its platform; the second image's config is rewritten to the other architecture.
Its binaries stay this machine's, so its RUN-free image still runs here: that lets `run
--platform` prove which entry it ran without emulation.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from stepbuild.api.registry import images as api_images
from stepbuild.api.registry import push as api_push
from stepbuild.oci.digest import sha256_bytes
from stepbuild.oci.documents import MEDIA_TYPE_INDEX
from stepbuild.oci.platform import Platform
from stepbuild.store.store import Store
from tests.integration import registry_fixture
from tests.integration.builds import Stepbuild, assert_clear_error, base_image, write_context
from tests.integration.containers import Podman
from tests.integration.registry_fixture import RunningRegistry

pytestmark = pytest.mark.root

plain_registry = registry_fixture.plain_registry

HOST = Platform.host()
OTHER = Platform.of("linux", "arm64" if HOST.architecture != "arm64" else "amd64")
MISSING = "linux/s390x"


@dataclasses.dataclass(frozen=True)
class Multi:
    """Store A with `multi:1`, an index of HOST (`here`) and OTHER (`there`) images."""

    sb: Stepbuild
    index: str
    here: str
    there: str


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Multi:
    work = tmp_path_factory.mktemp("indexes")
    sb = Stepbuild(work / "a")
    base_image(sb, work)
    for name in ("here", "there"):
        context = write_context(work / name, f"FROM base\nRUN echo {name} > /platform\n"
                                             'CMD ["cat", "/platform"]\n')
        sb.build(context, "-q", "-t", name)
    store = Store(sb.root)
    here = store.resolve("here")
    there = store.resolve("there")
    assert here is not None and there is not None
    manifest = store.manifest(there)
    config = dataclasses.replace(store.config(manifest), architecture=OTHER.architecture,
                                 variant=OTHER.written_variant)
    there = store.put_image(config, manifest.layers)
    index = store.put_index([here, there])
    store.tag("multi:1", index)
    return Multi(sb, index.digest, here.digest, there.digest)


@pytest.fixture(autouse=True)
def private_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)


def inspect(sb: Stepbuild, *args: str) -> dict[str, object]:
    document: dict[str, object] = json.loads(sb("inspect", *args).stdout)
    return document


def skopeo(*args: str) -> str:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, check=True,
                          timeout=120).stdout


def assert_index_of_two(raw: str) -> list[dict[str, object]]:
    """`raw` is an OCI index of a HOST and an OTHER manifest; returns its entries."""
    document = json.loads(raw)
    assert document["mediaType"] == MEDIA_TYPE_INDEX
    entries: list[dict[str, object]] = document["manifests"]
    assert [Platform.from_oci(e["platform"]) for e in entries] == [HOST, OTHER]  # type: ignore[arg-type]
    return entries


# --- the store's commands ---------------------------------------------------------------------


def test_images_shows_an_index_as_one_row(multi: Multi) -> None:
    rows = {line.split()[0]: line.split() for line in multi.sb("images").stdout.splitlines()}
    assert rows["NAME"] == ["NAME", "DIGEST", "SIZE", "PLATFORMS"]
    assert rows["multi:1"][1] == multi.index.removeprefix("sha256:")[:12]
    assert rows["multi:1"][-1] == f"{HOST},{OTHER}"
    assert rows["here"][-1] == str(HOST)
    listed = {image.name: image for image in api_images(root=multi.sb.root)}
    assert listed["multi:1"].digest == multi.index
    assert listed["here"].size < listed["multi:1"].size < 2 * listed["here"].size  # base once


def test_inspect_prints_the_index_and_each_platform_or_one(multi: Multi) -> None:
    whole = inspect(multi.sb, "multi:1")
    assert whole["digest"] == multi.index
    assert_index_of_two(json.dumps(whole["index"]))
    manifests = whole["manifests"]
    assert isinstance(manifests, list)
    assert [m["digest"] for m in manifests] == [multi.here, multi.there]
    assert manifests[1]["config"]["architecture"] == OTHER.architecture
    one = inspect(multi.sb, "--platform", str(OTHER), "multi:1")
    assert one["digest"] == multi.there and "index" not in one


def test_run_and_history_pick_the_platform(multi: Multi) -> None:
    assert multi.sb.run("multi:1") == "here\n"  # the host's entry by default
    assert multi.sb("run", "--platform", str(OTHER), "multi:1").stdout == "there\n"
    history = multi.sb("history", "--platform", str(OTHER), "multi:1").stdout
    assert "echo there" in history and "echo here" not in history


def test_a_missing_platform_is_one_clear_line(multi: Multi) -> None:
    for command in ("run", "inspect", "history"):
        result = multi.sb(command, "--platform", MISSING, "multi:1", check=False)
        assert_clear_error(result, 1, f"no {MISSING} image", f"{HOST}, {OTHER}")
    result = multi.sb("inspect", "--platform", str(OTHER), "here", check=False)
    assert_clear_error(result, 1, f"no {OTHER} image", f"it has: {HOST}")
    result = multi.sb("run", "--platform", "linux/", "multi:1", check=False)
    assert_clear_error(result, 2, "not a platform")


# --- export and load --------------------------------------------------------------------------


def test_oci_exports_carry_the_whole_index(multi: Multi, tmp_path: Path) -> None:
    archive, layout = tmp_path / "multi.tar", tmp_path / "layout"
    out = multi.sb("export", "multi:1", "-o", f"type=oci,dest={archive}",
                   "-o", f"type=oci-layout,dest={layout}").stdout
    index_json = json.loads((layout / "index.json").read_text())
    [top] = index_json["manifests"]
    assert top["mediaType"] == MEDIA_TYPE_INDEX
    assert top["annotations"]["org.opencontainers.image.ref.name"] == "multi:1"
    assert top["digest"] in out
    entries = assert_index_of_two(skopeo("inspect", "--raw", f"oci-archive:{archive}"))
    assert assert_index_of_two(skopeo("inspect", "--raw", f"oci:{layout}:multi:1")) == entries
    copied = tmp_path / "copied"
    skopeo("copy", "-q", "--all", f"oci-archive:{archive}", f"oci:{copied}:x")
    for entry in entries:  # every platform's manifest (and so its blobs: skopeo checks)
        assert (copied / "blobs" / "sha256" / str(entry["digest"]).split(":")[1]).is_file()


def test_docker_and_tar_exports_write_one_platform(multi: Multi, tmp_path: Path) -> None:
    docker = tmp_path / "other.docker.tar"
    multi.sb("export", "--platform", str(OTHER), "multi:1", "-o", f"type=docker,dest={docker}")
    with tarfile.open(docker) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(tar.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
    assert config["architecture"] == OTHER.architecture
    for platform, expected in ((None, b"here\n"), (str(OTHER), b"there\n")):
        rootfs = tmp_path / f"rootfs-{expected.decode().strip()}.tar"
        flags = ("--platform", platform) if platform else ()
        multi.sb("export", *flags, "multi:1", "-o", f"type=tar,dest={rootfs}")
        with tarfile.open(rootfs) as tar:
            assert tar.extractfile("platform").read() == expected  # type: ignore[union-attr]
    result = multi.sb("export", "--platform", MISSING, "multi:1", "-o",
                      f"type=docker,dest={tmp_path / 'none.tar'}", check=False)
    assert_clear_error(result, 1, f"no {MISSING} image")
    assert not (tmp_path / "none.tar").exists()


def test_load_of_an_index_archive_keeps_every_platform(multi: Multi, tmp_path: Path) -> None:
    archive = tmp_path / "multi.tar"
    multi.sb("export", "multi:1", "-o", f"type=oci,dest={archive}")
    fresh = Stepbuild(tmp_path / "fresh")
    assert fresh("load", "-i", str(archive)).stdout == "Loaded image: multi:1\n"
    loaded = inspect(fresh, "multi:1")
    assert loaded["digest"] == multi.index  # the store's form: the same documents
    fresh("prune", "-f", "--all")  # the tag keeps the index, its manifests and their layers
    assert fresh("run", "--platform", str(OTHER), "multi:1").stdout == "there\n"
    assert fresh("check").stdout == "store is consistent\n"


# --- registries -------------------------------------------------------------------------------


def test_push_sends_each_manifest_then_the_index(multi: Multi, tmp_path: Path,
                                                 plain_registry: RunningRegistry) -> None:
    ref = f"{plain_registry.host}/idx/multi:1"
    result = api_push("multi:1", ref, root=multi.sb.root)
    # Layers: the shared base once, each platform's own; the two configs. The base is found
    # there ("exists") when the second platform goes.
    assert (result.uploaded, result.existing, result.mounted) == (5, 1, 0)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")
    entries = assert_index_of_two(raw)
    assert sha256_bytes(raw.encode()) == result.digest
    copied = tmp_path / "copied"
    skopeo("copy", "-q", "--all", "--src-tls-verify=false", f"docker://{ref}", f"oci:{copied}:x")
    for entry in entries:
        assert (copied / "blobs" / "sha256" / str(entry["digest"]).split(":")[1]).is_file()
    again = multi.sb("push", "multi:1", ref)  # nothing new to send
    assert again.stdout.strip() == result.digest
    assert "manifest unchanged" in again.stderr and "uploaded" not in again.stderr


def test_pull_picks_a_platform_or_keeps_the_index(multi: Multi, tmp_path: Path,
                                                  plain_registry: RunningRegistry) -> None:
    ref = f"{plain_registry.host}/idx/pulled:1"
    pushed = multi.sb("push", "multi:1", ref).stdout.strip()
    for flags, expected in (((), multi.here), (("--platform", str(OTHER)), multi.there),
                            (("--all-platforms",), multi.index)):
        fresh = Stepbuild(tmp_path / f"fresh{len(flags)}-{expected[7:15]}")
        out = fresh("pull", "--tls-verify=false", *flags, ref).stdout.strip()
        assert out == pushed  # the registry's digest: the index's
        assert inspect(fresh, ref)["digest"] == expected
        assert fresh("check").stdout == "store is consistent\n"
    missing = Stepbuild(tmp_path / "missing")
    result = missing("pull", "--tls-verify=false", "--platform", MISSING, ref, check=False)
    assert_clear_error(result, 1, f"no {MISSING} image", f"{HOST}, {OTHER}")
    assert missing("images").stdout.splitlines()[1:] == []


def test_podman_pulls_the_other_platform_from_our_index(
        multi: Multi, podman: Podman, plain_registry: RunningRegistry, tmp_path: Path) -> None:
    ref = f"{plain_registry.host}/idx/podman:1"
    multi.sb("push", "multi:1", ref)
    auth = tmp_path / "auth.json"  # podman wants the auth file it is given to exist
    auth.write_text('{"auths": {}}')
    pulled = subprocess.run(podman.command("pull", "-q", "--tls-verify=false", "--authfile",
                                           str(auth), "--platform",
                                           str(OTHER), f"docker://{ref}"),
                            capture_output=True, text=True, timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    out = subprocess.run(podman.command("image", "inspect", ref), check=True,
                         capture_output=True, text=True, timeout=60).stdout
    assert json.loads(out)[0]["Architecture"] == OTHER.architecture


def test_load_of_skopeos_copy_all_archive(multi: Multi, tmp_path: Path,
                                          plain_registry: RunningRegistry) -> None:
    ref = f"{plain_registry.host}/idx/skopeo:1"
    multi.sb("push", "multi:1", ref)
    archive = tmp_path / "all.tar"
    skopeo("copy", "-q", "--all", "--src-tls-verify=false", f"docker://{ref}",
           f"oci-archive:{archive}:{ref}")
    fresh = Stepbuild(tmp_path / "fresh")
    assert fresh("load", "-i", str(archive)).stdout == f"Loaded image: {ref}\n"
    # gzip layers in the archive, uncompressed in the store: the store's documents again
    assert inspect(fresh, ref)["digest"] == multi.index
    assert fresh("run", "--platform", str(OTHER), ref).stdout == "there\n"
