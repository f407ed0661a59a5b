"""`build --platform` and `FROM --platform` (issue 15), for real, as root.

Proofs, through the CLI: `--platform linux/amd64,linux/arm64` of a Stepfile whose foreign-
platform stage only COPYs gives an OCI index under the tag with two manifests whose configs say
amd64 and arm64 (skopeo reads them from the store, umoci too); each image holds the TARGETARCH
written by a RUN of a `$BUILDPLATFORM` stage, whose steps before `ARG TARGETARCH` are CACHED
for the second platform (the cross-compilation pattern); `FROM --platform=linux/arm64 scratch`
gives an arm64 image; the platform is in every key (a COPY-only stage built for arm64 hits no
amd64 record); a team cache export of a 2-platform build serves both platforms to another
store; FROM an index in the registry picks the manifest of the platform built; a local image
of another platform and bad platforms are one clear line; samples/multiarch builds and its
build stage cross-builds for the other architecture. No RUN here runs in a stage of a
foreign platform: that needs QEMU (sandbox/binfmt.py), tested with it.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import requests

from stepbuild.oci.platform import Platform
from tests.integration import registry_fixture
from tests.integration.builds import (
    EPOCH,
    PROJECT,
    Stepbuild,
    assert_clear_error,
    rootfs_tarball,
    store_with_base,
    write_context,
)
from tests.integration.registry_fixture import RunningRegistry

pytestmark = pytest.mark.root

plain_registry = registry_fixture.plain_registry

HOST = Platform.host()
OTHER = "linux/arm64" if HOST.architecture != "arm64" else "linux/amd64"
TWO = f"{HOST},{OTHER}"
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"

CROSS = (
    "FROM --platform=$BUILDPLATFORM base AS build\n"
    "RUN echo tools > /tools\n"
    "ARG TARGETARCH\n"
    "RUN echo \"$TARGETARCH built on $(uname -m)\" > /out\n"
    "FROM scratch\n"
    "COPY hello.txt /hello.txt\n"
    "COPY --from=build /out /arch\n"
)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("platforms")


@pytest.fixture(scope="module")
def sb(work: Path) -> Stepbuild:
    return store_with_base(work, "store", *EPOCH)


def blob(sb: Stepbuild, digest: str) -> bytes:
    return (sb.root / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def document(sb: Stepbuild, digest: str) -> Any:
    return json.loads(blob(sb, digest))


def tagged(sb: Stepbuild, name: str) -> dict[str, Any]:
    """The index.json entry of the tag `name`."""
    index = json.loads((sb.root / "index.json").read_text())
    [entry] = [m for m in index["manifests"]
               if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == name]
    return entry  # type: ignore[no-any-return]


def image_file(sb: Stepbuild, manifest_digest: str, path: str) -> str:
    """The content of `path` in the image (its top-most layer that has it)."""
    for layer in reversed(document(sb, manifest_digest)["layers"]):
        with tarfile.open(fileobj=io.BytesIO(blob(sb, layer["digest"]))) as tar:
            if path in tar.getnames():
                member = tar.extractfile(path)
                assert member is not None
                return member.read().decode()
    raise AssertionError(f"{path} is in no layer of {manifest_digest}")


def config_platform(sb: Stepbuild, manifest_digest: str) -> str:
    config = document(sb, document(sb, manifest_digest)["config"]["digest"])
    return str(Platform.from_oci(config))


def skopeo(*args: str) -> str:
    return subprocess.run(["skopeo", *args], check=True, capture_output=True,
                          text=True).stdout


def cached_lines(stderr: str, label: str) -> list[str]:
    """CACHED/DONE of the steps of one stage of one platform (`[linux/arm64 build]`; "": of
    a build without labels)."""
    prefix = f"[{label}] " if label else ""
    return [line.removeprefix(prefix).split()[0] for line in stderr.splitlines()
            if line.startswith(prefix) and line.removeprefix(prefix).split()[:1]
            in (["CACHED"], ["DONE"])]


def test_two_platforms_make_a_tagged_index_of_two_images(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "cross", CROSS, {"hello.txt": "hello\n"})
    built = sb.build(context, "--platform", TWO, "-t", "multi", *EPOCH,
                     "--metadata-file", str(work / "meta.json"))
    digest = built.stdout.strip().splitlines()[-1]
    entry = tagged(sb, "multi")
    assert entry["mediaType"] == INDEX and entry["digest"] == digest

    raw = json.loads(skopeo("inspect", "--raw", f"oci:{sb.root}:multi"))
    assert raw["mediaType"] == INDEX
    assert [Platform.from_oci(m["platform"]) for m in raw["manifests"]] == [
        HOST, Platform.of(*OTHER.split("/"))]
    for manifest, wanted in zip(raw["manifests"], (HOST, OTHER), strict=True):
        assert manifest["mediaType"] == MANIFEST
        assert config_platform(sb, manifest["digest"]) == str(wanted)
        arch = str(wanted).split("/")[1]
        # TARGETARCH of each target, written natively in the $BUILDPLATFORM stage
        machine = subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout
        assert image_file(sb, manifest["digest"], "arch") == f"{arch} built on {machine}"
        assert image_file(sb, manifest["digest"], "hello.txt") == "hello\n"
        # skopeo picks each platform's image out of the index in the store
        config = json.loads(skopeo("--override-arch", arch, "inspect", "--config",
                                   f"oci:{sb.root}:multi"))
        assert config["architecture"] == arch and config["os"] == "linux"

    # the cross-compilation pattern: the second target reuses the build stage's native work
    assert cached_lines(built.stderr, f"{HOST} build") == ["DONE", "DONE"]
    assert cached_lines(built.stderr, f"{OTHER} build") == ["CACHED", "DONE"]

    metadata = json.loads((work / "meta.json").read_text())
    assert metadata["containerimage.digest"] == digest
    assert "containerimage.config.digest" not in metadata  # an index has none
    assert metadata["stepbuild.platforms"] == {
        str(HOST): raw["manifests"][0]["digest"], OTHER: raw["manifests"][1]["digest"]}

    again = sb.build(context, "--platform", TWO, "-t", "multi", *EPOCH)
    assert again.stdout.strip().splitlines()[-1] == digest  # every step cached: same index


def test_umoci_reads_each_platforms_image(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "umoci", "FROM scratch\nCOPY hello.txt /hello.txt\n",
                            {"hello.txt": "hi\n"})
    sb.build(context, "--platform", TWO, "-t", "for-umoci", *EPOCH)
    index = document(sb, tagged(sb, "for-umoci")["digest"])
    for entry in index["manifests"]:
        # umoci reads a layout's image by ref and does not choose among an index's
        # platforms: tag each platform's manifest by itself
        name = f"for-umoci-{entry['platform']['architecture']}"
        sb("tag", entry["digest"], name)
        stat = json.loads(subprocess.run(["umoci", "stat", "--json", "--image",
                                          f"{sb.root}:{name}"], check=True,
                                         capture_output=True, text=True).stdout)
        assert [h["created_by"] for h in stat["history"]][-1].startswith("COPY hello.txt")
        bundle = work / f"bundle-{name}"
        subprocess.run(["umoci", "unpack", "--image", f"{sb.root}:{name}", str(bundle)],
                       check=True, capture_output=True)
        assert (bundle / "rootfs" / "hello.txt").read_text() == "hi\n"


def test_one_platform_is_a_plain_image_of_that_platform(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "arm-scratch",
                            "FROM --platform=linux/arm64 scratch\nCOPY hello.txt /hello.txt\n",
                            {"hello.txt": "hello\n"})
    digest = sb.build(context, "-t", "arm", *EPOCH).stdout.strip().splitlines()[-1]
    assert tagged(sb, "arm")["mediaType"] == MANIFEST
    assert config_platform(sb, digest) == "linux/arm64"
    raw = json.loads(skopeo("inspect", "--raw", f"oci:{sb.root}:arm"))
    assert raw["mediaType"] == MANIFEST
    target = write_context(work / "target-arm", "FROM scratch\nCOPY hello.txt /hello.txt\n",
                           {"hello.txt": "hello\n"})
    same = sb.build(target, "--platform", "linux/arm64", *EPOCH).stdout.strip().splitlines()[-1]
    assert same == digest  # --platform and FROM --platform make the same image


def test_no_step_of_one_platform_hits_a_record_of_another(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "copy-only",
                            "FROM scratch\nCOPY a.txt /a.txt\nCOPY --link b.txt /b.txt\n",
                            {"a.txt": "a\n", "b.txt": "b\n"})
    first = sb.build(context, "--platform", str(HOST), *EPOCH)
    assert "CACHED" not in first.stderr
    other = sb.build(context, "--platform", OTHER, *EPOCH)
    assert "CACHED" not in other.stderr  # the same files and steps: still another platform
    assert sb.build(context, "--platform", OTHER, *EPOCH).stderr.count("CACHED") == 2


def test_the_team_cache_serves_each_platform(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "team", CROSS.replace("hello", "team"),
                            {"team.txt": "team\n"})
    cache = work / "team-cache"
    exported = sb.build(context, "--platform", TWO, "-t", "team", *EPOCH,
                        "--cache-to", f"type=local,dest={cache},mode=max")
    digest = exported.stdout.strip().splitlines()[-1]
    other = store_with_base(work, "other-store", *EPOCH)
    imported = other.build(context, "--platform", TWO, *EPOCH,
                           "--cache-from", f"type=local,src={cache}")
    assert imported.stdout.strip().splitlines()[-1] == digest
    assert "DONE" not in "\n".join(line for line in imported.stderr.splitlines()
                                   if line.startswith("["))  # every step of both: the cache


def test_from_an_index_in_the_registry_picks_the_platform_built(
        sb: Stepbuild, work: Path, plain_registry: RunningRegistry) -> None:
    repo = f"{plain_registry.host}/multi/base"
    entries = []
    for platform in (str(HOST), OTHER):
        arch = platform.split("/")[1]
        context = write_context(work / f"base-{arch}",
                                "FROM scratch\nCOPY which /which\n", {"which": f"{arch}\n"})
        sb.build(context, "--platform", platform, "-t", f"base-{arch}", *EPOCH)
        pushed = sb("push", "-q", f"base-{arch}", f"{repo}:{arch}").stdout.strip()
        size = len(requests.get(f"{plain_registry.url}/v2/multi/base/manifests/{pushed}",
                                headers={"Accept": MANIFEST}, timeout=10).content)
        entries.append({"mediaType": MANIFEST, "digest": pushed, "size": size,
                        "platform": Platform.of(*platform.split("/")).to_oci()})
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries})
    put = requests.put(f"{plain_registry.url}/v2/multi/base/manifests/1", data=index,
                       headers={"Content-Type": INDEX}, timeout=10)
    assert put.status_code == 201, put.text

    fresh = Stepbuild(work / "fresh-store")
    context = write_context(work / "on-index", f"FROM {repo}:1\nCOPY extra /extra\n",
                            {"extra": "x\n"})
    multi = fresh.build(context, "--platform", TWO, "-t", "on-index", *EPOCH)
    index_digest = multi.stdout.strip().splitlines()[-1]
    for entry in document(fresh, index_digest)["manifests"]:
        arch = entry["platform"]["architecture"]
        assert image_file(fresh, entry["digest"], "which") == f"{arch}\n"
        assert config_platform(fresh, entry["digest"]) == str(Platform.from_oci(
            entry["platform"]))
    # built for this machine only, the same base is this machine's image
    native = fresh.build(context, "-t", "native", *EPOCH).stdout.strip().splitlines()[-1]
    assert image_file(fresh, native, "which") == f"{HOST.architecture}\n"


def test_a_local_image_of_another_platform_is_refused(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "on-base", "FROM base\nCOPY a /a\n", {"a": "a\n"})
    wrong = f"Stepfile:1:1: base image 'base' is {HOST}, not {OTHER}"
    never = sb.build(context, "--platform", OTHER, "--pull=never", check=False)
    assert_clear_error(never, 1, wrong, "FROM --platform")
    # `base` is a registry name too (docker.io/library/base): no registry here to pull from
    missing = sb.build(context, "--platform", OTHER, check=False)
    assert_clear_error(missing, 1, wrong, f"pulling one for {OTHER} failed")
    assert sb.build(context, "--platform", str(HOST), *EPOCH).returncode == 0


def test_bad_platforms_are_one_clear_line(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "bad", "FROM scratch AS a\nCOPY a /a\n"
                            "FROM --platform=bogus/x/y/z scratch\nCOPY --from=a /a /a\n",
                            {"a": "a"})
    refused = sb.build(context, check=False)
    assert_clear_error(refused, 2, "Stepfile:3:1: --platform=bogus/x/y/z: not a platform")
    flag = sb.build(context, "--platform", "linux/amd64,nonsense/x", check=False)
    assert_clear_error(flag, 2, "--platform 'nonsense/x': not a platform")
    empty = sb.build(context, "--platform", "linux/amd64,", check=False)
    assert_clear_error(empty, 2, "--platform '': not a platform")


def test_the_multiarch_sample_cross_builds(sb: Stepbuild, work: Path) -> None:
    context = work / "multiarch"
    shutil.copytree(PROJECT / "samples" / "multiarch", context)
    shutil.copy(rootfs_tarball(work), context / f"busybox-rootfs-{HOST.architecture}.tar")
    machine = subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout.strip()
    sb.build(context, "-t", "multiarch", *EPOCH)
    cpu = {"amd64": "x86-64", "arm64": "AArch64"}[HOST.architecture]
    assert sb.run("multiarch") == (f"hello from a {cpu} build ({HOST.architecture}), made on "
                                   f"{machine}, running on {machine}\n")
    # its build stage, for the other target: made natively, for the other architecture
    # (the arm64 image itself needs scripts/make-arm64-busybox-rootfs.sh's rootfs)
    other = OTHER.split("/")[1]
    built = sb.build(context, "--platform", OTHER, "--target", "build", "-t", "cross", *EPOCH)
    assert cached_lines(built.stderr, "")[:2] == ["CACHED", "CACHED"]  # ADD, COPY: native
    digest = built.stdout.strip().splitlines()[-1]
    assert config_platform(sb, digest) == str(HOST)  # a $BUILDPLATFORM stage
    other_cpu = {"amd64": "x86-64", "arm64": "AArch64"}[other]
    assert f"a {other_cpu} build ({other}), made on {machine}" in image_file(sb, digest,
                                                                             "out/hello")


def test_copy_from_an_index_takes_the_copying_stages_platform(sb: Stepbuild,
                                                              work: Path) -> None:
    """COPY --from=IMAGE of an image index reads the entry of the stage's platform, as
    BuildKit does (not this machine's)."""
    source = write_context(work / "index-to-copy", CROSS, {"hello.txt": "hello\n"})
    sb.build(source, "--platform", TWO, "-t", "copied-index", *EPOCH)
    context = write_context(work / "copy-from-index",
                            "FROM scratch\nCOPY --from=copied-index /arch /\n")
    built = sb.build(context, "--platform", TWO, *EPOCH)
    index = document(sb, built.stdout.strip().splitlines()[-1])
    machine = subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout
    for manifest in index["manifests"]:
        arch = Platform.from_oci(manifest["platform"]).architecture
        assert image_file(sb, manifest["digest"], "arch") == f"{arch} built on {machine}"
