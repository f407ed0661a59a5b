"""Reproducible builds, standard annotations, and schema-valid documents in the store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from stepbuild.oci import documents as oci
from tests.integration.builds import Stepbuild, base_image, write_context
from tests.unit.oci.test_documents import oci_schema, validate  # noqa: F401  (fixtures)

STEPFILE = (
    "FROM base\nARG GREETING=hi\nRUN echo $GREETING > /greeting && mkdir -p /data/sub"
    " && echo x > /data/sub/x && ln -s /greeting /link\nCOPY files/ /files/\n"
    "RUN rm /data/sub/x\nENV DONE=1\nCMD [\"cat\", \"/greeting\"]\n")
EPOCH = "1700000000"


def build_in(tmp_path: Path, name: str, *args: str) -> tuple[Stepbuild, str]:
    """A fresh store and a fresh copy of the context, at paths of their own."""
    sb = Stepbuild(tmp_path / name / "store")
    base_image(sb, tmp_path / name, *args)
    context = write_context(tmp_path / name / "some" / "where" / "ctx", STEPFILE,
                            {"files/a.txt": "a\n", "files/b/c.txt": "c\n"})
    digest = sb.build(context, "-q", "-t", "repro", *args).stdout.strip()
    return sb, digest


def test_two_fresh_stores_at_different_paths_give_the_same_digest(tmp_path: Path) -> None:
    first, digest_a = build_in(tmp_path, "one", "--build-arg", f"SOURCE_DATE_EPOCH={EPOCH}")
    second, digest_b = build_in(tmp_path, "two", "--build-arg", f"SOURCE_DATE_EPOCH={EPOCH}")
    assert digest_a == digest_b
    config = json.loads(first("inspect", "repro").stdout)["config"]
    assert config["created"] == "2023-11-14T22:13:20Z"
    assert {h["created"] for h in config["history"][-7:]} == {"2023-11-14T22:13:20Z"}


def test_epoch_clamps_the_mtimes_of_new_files(tmp_path: Path) -> None:
    sb, _ = build_in(tmp_path, "one", "--build-arg", f"SOURCE_DATE_EPOCH={EPOCH}")
    import tarfile

    manifest = json.loads(sb("inspect", "repro").stdout)["manifest"]
    digest = manifest["layers"][-3]["digest"].removeprefix("sha256:")  # the first RUN
    with tarfile.open(sb.root / "blobs" / "sha256" / digest) as tar:
        assert {m.mtime for m in tar.getmembers()} == {int(EPOCH)}


def test_reproducible_flag_builds_twice(tmp_path: Path) -> None:
    sb, _ = build_in(tmp_path, "one", "--reproducible")
    context = write_context(tmp_path / "random", "FROM base\nRUN head -c 16 /dev/urandom > /r\n")
    result = sb.build(context, "--reproducible", check=False)
    assert result.returncode == 1
    assert "the build is not reproducible" in result.stderr and "layer" in result.stderr
    assert "Traceback" not in result.stderr


def test_annotations_and_schema_valid_documents(tmp_path: Path, validate) -> None:  # noqa: F811
    sb, digest = build_in(tmp_path, "one")
    base_digest = json.loads(sb("inspect", "base").stdout)["digest"]
    document = json.loads(sb("inspect", "repro").stdout)
    annotations = document["manifest"]["annotations"]
    assert annotations["org.opencontainers.image.base.name"] == "base"
    assert annotations["org.opencontainers.image.base.digest"] == base_digest
    assert annotations["org.opencontainers.image.created"] == document["config"]["created"]
    index = json.loads((sb.root / "index.json").read_text())
    assert {m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]
            } == {"base", "repro"}
    assert oci.validate_layout(sb.root) == []
    assert validate(index, oci.MEDIA_TYPE_INDEX) == []
    for entry in index["manifests"]:
        manifest = json.loads((sb.root / "blobs/sha256" / entry["digest"][7:]).read_bytes())
        assert validate(manifest, oci.MEDIA_TYPE_MANIFEST) == []
        config = json.loads((sb.root / "blobs/sha256" / manifest["config"]["digest"][7:]
                             ).read_bytes())
        assert validate(config, oci.MEDIA_TYPE_CONFIG) == []


def test_skopeo_reads_the_store(tmp_path: Path) -> None:
    import subprocess

    assert shutil.which("skopeo"), "skopeo missing: scripts/setup.sh installs it"
    sb, digest = build_in(tmp_path, "one")
    out = subprocess.run(["skopeo", "inspect", f"oci:{sb.root}:repro"], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out)["Digest"] == digest


def test_later_steps_see_the_clamped_times(tmp_path: Path) -> None:
    # The layer dir a later step reads must match the layer tar, or a builder that imported
    # the layer from a shared cache would see other times than the one that built it.
    sb = Stepbuild(tmp_path / "store")
    base_image(sb, tmp_path)
    context = write_context(tmp_path / "ctx", "FROM base\nRUN touch /made\n"
                            "RUN stat -c %Y /made > /seen\n")
    sb.build(context, "-t", "seen", "--build-arg", f"SOURCE_DATE_EPOCH={EPOCH}")
    assert sb.run("seen", "cat", "/seen") == f"{EPOCH}\n"


def test_workdir_is_reproducible_with_source_date_epoch(tmp_path: Path) -> None:
    """BuildKit's testWorkdirSourceDateEpochReproducible: the directory WORKDIR makes (and the
    parent it changes) carry the epoch, so building again from nothing gives the same image."""
    import tarfile

    epoch = ("--build-arg", f"SOURCE_DATE_EPOCH={EPOCH}")
    sb = Stepbuild(tmp_path / "store")
    base_image(sb, tmp_path, *epoch)
    context = write_context(tmp_path / "ctx", "FROM base\nWORKDIR /mydir\n")
    sb.build(context, "-q", "-t", "wd", "--reproducible", *epoch)  # built twice, compared
    manifest = json.loads(sb("inspect", "wd").stdout)["manifest"]
    digest = manifest["layers"][-1]["digest"].removeprefix("sha256:")
    with tarfile.open(sb.root / "blobs" / "sha256" / digest) as tar:
        members = {m.name: m.mtime for m in tar.getmembers()}
    assert "mydir" in members and set(members.values()) == {int(EPOCH)}
