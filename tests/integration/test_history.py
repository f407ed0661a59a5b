"""`stepbuild history` of a real build (issue 16): docker's columns, each layer's size as the
store holds its tar, 0B for entries without a layer, heredocs as written."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from stepbuild.oci.digest import digest_hex
from tests.integration.builds import (
    EPOCH,
    Stepbuild,
    assert_clear_error,
    store_with_base,
    write_context,
)
from tests.integration.containers import Podman

pytestmark = pytest.mark.root

STEPFILE = (
    "FROM base\n"
    "RUN echo hi > /hi\n"
    "COPY <<EOF /etc/hello\n"
    "hello\n"
    "EOF\n"
    "RUN <<EOF\n"
    "echo a > /a\n"
    "EOF\n"
    "ENV GREETING=hello\n"
)
WHEN = "2023-11-14T22:13:20Z"  # EPOCH's time: every entry's


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Stepbuild, str]:
    """A store with the busybox base and `app` built over it; (store, app's digest)."""
    work = tmp_path_factory.mktemp("history")
    sb = store_with_base(work, "store", *EPOCH)
    result = sb.build(write_context(work / "ctx", STEPFILE), "-q", "-t", "app", *EPOCH)
    return sb, result.stdout.strip()


def layer_blobs(sb: Stepbuild) -> list[Path]:
    """app's layer tars in the store, base first."""
    manifest = json.loads(sb("inspect", "app").stdout)["manifest"]
    return [sb.root / "blobs" / "sha256" / digest_hex(layer["digest"])
            for layer in manifest["layers"]]


def test_history_shows_each_layer_s_size_and_the_heredocs_as_written(
        built: tuple[Stepbuild, str]) -> None:
    sb, digest = built
    busybox, run, copy, heredoc_run = (blob.stat().st_size for blob in layer_blobs(sb))
    assert (run, copy, heredoc_run) == (2048, 2560, 2048)  # tars of one small file each
    image = digest.removeprefix("sha256:")[:12]
    pad = len(str(busybox))  # the one size this test does not know: busybox's own
    assert sb("history", "-H=false", "app").stdout.splitlines() == [
        f"IMAGE          CREATED                CREATED BY                               "
        f"{'SIZE':<{pad}}   COMMENT",
        f"{image}   {WHEN}   ENV GREETING=hello                       0",
        f"<missing>      {WHEN}   RUN /bin/sh -c echo a > /a\\n             2048",
        f"<missing>      {WHEN}   COPY <<EOF /etc/hello                    2560",
        f"<missing>      {WHEN}   RUN /bin/sh -c echo hi > /hi             2048",
        f"<missing>      {WHEN}   CMD [\"sh\"]                               0",
        f"<missing>      {WHEN}   ENV PATH=/bin:/usr/bin:/sbin:/usr/sbin   0",
        f"<missing>      {WHEN}   ADD busybox-rootfs.tar /                 {busybox}"]


def test_the_size_is_that_of_the_uncompressed_layer_tar(built: tuple[Stepbuild, str]) -> None:
    sb, _ = built
    copy_layer = layer_blobs(sb)[2]
    with tarfile.open(copy_layer, mode="r:") as tar:  # a plain tar: not compressed
        hello = tar.extractfile("etc/hello")
        assert hello is not None and hello.read() == b"hello\n"


def test_json_lines_carry_the_full_text_and_human_sizes(built: tuple[Stepbuild, str]) -> None:
    sb, digest = built
    lines = sb("history", "--format", "json", "app").stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [(row["ID"], row["CreatedBy"], row["Size"], row["CreatedAt"]) for row in rows[:4]] == [
        (digest.removeprefix("sha256:")[:12], "ENV GREETING=hello", "0B", WHEN),
        ("<missing>", "RUN /bin/sh -c echo a > /a\n", "2.0kB", WHEN),
        ("<missing>", "COPY <<EOF /etc/hello", "2.6kB", WHEN),
        ("<missing>", "RUN /bin/sh -c echo hi > /hi", "2.0kB", WHEN)]
    assert len(rows) == 7 and all(row["CreatedSince"].endswith(" ago") for row in rows)


def test_a_cached_rebuild_keeps_the_history_and_the_digest(
        built: tuple[Stepbuild, str], tmp_path: Path) -> None:
    # created_by is no part of a key: the same records hit, the same image comes out.
    sb, digest = built
    again = sb.build(write_context(tmp_path / "ctx", STEPFILE), "-q", "-t", "app2", *EPOCH)
    assert again.stdout.strip() == digest
    assert "COPY <<EOF /etc/hello" in sb("history", "app2").stdout


def test_a_missing_image_is_one_clear_line(built: tuple[Stepbuild, str]) -> None:
    sb, _ = built
    assert_clear_error(sb("history", "ghost", check=False), 1, "image 'ghost' not found")


def test_podman_sees_the_same_history_and_sizes(built: tuple[Stepbuild, str],
                                                podman: Podman) -> None:
    # podman reads the store as an OCI layout; its sizes are those of the layers it unpacked.
    sb, _ = built
    pulled = subprocess.run(podman.command("pull", "-q", f"oci:{sb.root}:app"),
                            capture_output=True, text=True, timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    theirs = json.loads(subprocess.run(
        podman.command("history", "--format", "json", pulled.stdout.strip()),
        check=True, capture_output=True, text=True, timeout=60).stdout)
    ours = [json.loads(line) for line in
            sb("history", "--format", "json", "-H=false", "app").stdout.splitlines()]
    assert [(row["CreatedBy"], int(row["Size"])) for row in ours] == [
        (row["CreatedBy"], row["size"]) for row in theirs]
