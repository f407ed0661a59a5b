"""Where a build's result goes, for real: archives on standard output, type=image and
type=registry outputs, --annotation where buildx puts annotations, and `images --digests`.

Proofs: the bytes of `-o -` read from a pipe are a tar of the image's root filesystem, equal
to the bytes of `-o type=tar,dest=FILE`, and stdout carries nothing else (the digest goes to
stderr); `type=oci,dest=-` and `type=docker,dest=-` piped into files are read by skopeo; a
terminal or two stdout outputs are refused before the build; `type=registry,name=A,name=B`
and `type=image,push=true` push (skopeo confirms each digest, as --metadata-file does);
manifest annotations are in the local manifest (`stepbuild inspect`) and in the pushed one
(`skopeo inspect --raw`), index and manifest-descriptor ones in the oci-layout's index.json;
`images --digests` shows the local and the pushed digest, each named.
"""

from __future__ import annotations

import io
import json
import os
import pty
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import registry_fixture
from tests.integration.builds import (
    PROJECT,
    Stepbuild,
    assert_clear_error,
    base_image,
    write_context,
)
from tests.integration.registry_fixture import RunningRegistry

pytestmark = pytest.mark.root

plain_registry = registry_fixture.plain_registry


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="module")
def sb(work: Path) -> Stepbuild:
    store = Stepbuild(work / "store")
    base_image(store, work)
    return store


@pytest.fixture(scope="module")
def context(work: Path) -> Path:
    """A RUN that prints to its stdout and stderr: neither may reach the build's stdout."""
    return write_context(work / "ctx", "FROM base\nRUN echo streamed > /hello"
                                       " && echo run-stdout-marker && echo run-stderr-marker >&2\n")


@pytest.fixture(autouse=True)
def private_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the real ~/.docker/config.json."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)


def run_to(sb: Stepbuild, stdout: Any, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The CLI with its stdout given (a pipe, a file, a terminal); stderr captured."""
    env = {**os.environ, "STEPBUILD_ROOT": str(sb.root), "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "stepbuild", *args], env=env, stdout=stdout,
                          stderr=subprocess.PIPE, check=False, timeout=120)


def skopeo(*args: str) -> dict[str, Any]:
    out = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=True).stdout
    document: dict[str, Any] = json.loads(out)
    return document


# --- standard output ---------------------------------------------------------------------------


def test_dash_writes_the_root_filesystem_tar_to_the_pipe(sb: Stepbuild, context: Path,
                                                         tmp_path: Path) -> None:
    streamed = run_to(sb, subprocess.PIPE, "build", "-o", "-", str(context))
    assert streamed.returncode == 0, streamed.stderr.decode()
    with tarfile.open(fileobj=io.BytesIO(streamed.stdout)) as tar:  # nothing but the tar
        member = tar.extractfile("hello")
        assert member is not None and member.read() == b"streamed\n"
        assert "bin/busybox" in tar.getnames()
    for marker in (b"run-stdout-marker", b"run-stderr-marker"):  # the RUN ran, shown on stderr
        assert marker in streamed.stderr and marker not in streamed.stdout
    # The digest went to stderr (buildx's summary), as its last line.
    digest = streamed.stderr.decode().strip().splitlines()[-1]
    assert digest.startswith("sha256:") and digest.encode() not in streamed.stdout
    file = tmp_path / "rootfs.tar"
    sb.build(context, "-q", "-o", f"type=tar,dest={file}")
    assert file.read_bytes() == streamed.stdout
    explicit = run_to(sb, subprocess.PIPE, "build", "-q", "-o", "type=tar,dest=-", str(context))
    assert explicit.stdout == streamed.stdout
    assert explicit.stderr.decode().strip() == digest  # -q: the digest alone, on stderr
    assert not (context / "-").exists() and not Path("-").exists()


@pytest.mark.parametrize(("kind", "transport"), [("oci", "oci-archive"),
                                                  ("docker", "docker-archive")])
def test_archives_on_stdout_read_by_skopeo(sb: Stepbuild, context: Path, tmp_path: Path,
                                           kind: str, transport: str) -> None:
    piped = tmp_path / f"{kind}.tar"
    with open(piped, "wb") as f:
        result = run_to(sb, f, "build", "-t", f"out-{kind}", "-o", f"type={kind},dest=-",
                        str(context))
    assert result.returncode == 0, result.stderr.decode()
    file = tmp_path / f"{kind}-file.tar"
    sb.build(context, "-q", "-t", f"out-{kind}", "-o", f"type={kind},dest={file}")
    assert piped.read_bytes() == file.read_bytes()
    inspected = skopeo("inspect", f"{transport}:{piped}")
    assert len(inspected["Layers"]) == 2
    if kind == "oci":  # the manifest exported, as the build's output line says
        line = next(ln for ln in result.stderr.decode().splitlines() if ln.startswith("oci -"))
        assert inspected["Digest"] == line.split()[2]


def test_a_terminal_and_two_streams_are_refused_before_building(sb: Stepbuild, work: Path
                                                                ) -> None:
    context = write_context(work / "never", "FROM base\nRUN echo never > /never\n")
    controller, terminal = pty.openpty()
    try:
        result = run_to(sb, terminal, "build", "-o", "-", str(context))
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 2
    assert "refusing to write a tar to a terminal" in result.stderr.decode()
    two = sb.build(context, "-o", "-", "-o", "type=oci,dest=-", check=False)
    assert_clear_error(two, 2, "two outputs go to standard output")
    local = sb.build(context, "-o", "type=local,dest=-", check=False)
    assert_clear_error(local, 2, "type=local writes a directory")
    for stderr in (result.stderr.decode(), two.stderr, local.stderr):
        assert "RUN" not in stderr  # refused before any step
    assert not Path("-").exists()


def test_export_streams_too(sb: Stepbuild, context: Path, tmp_path: Path) -> None:
    sb.build(context, "-q", "-t", "exported")
    result = run_to(sb, subprocess.PIPE, "export", "exported", "-o", "type=oci,dest=-")
    assert result.returncode == 0, result.stderr.decode()
    (tmp_path / "e.tar").write_bytes(result.stdout)
    digest = skopeo("inspect", f"oci-archive:{tmp_path / 'e.tar'}")["Digest"]
    assert result.stderr.decode().split() == ["oci", "-", digest]  # the line on stderr


# --- type=image and type=registry -------------------------------------------------------------


def test_type_registry_pushes_to_each_name(sb: Stepbuild, context: Path, tmp_path: Path,
                                           plain_registry: RunningRegistry) -> None:
    refs = [f"{plain_registry.host}/outputs/reg:1", f"{plain_registry.host}/outputs/reg:2"]
    meta = tmp_path / "meta.json"
    built = sb.build(context, "-o", f"type=registry,name={refs[0]},name={refs[1]}",
                     "--metadata-file", str(meta))
    digests = {ref: skopeo("inspect", "--tls-verify=false", f"docker://{ref}")["Digest"]
               for ref in refs}
    assert set(digests.values()) == {built.stdout.strip()}
    metadata = json.loads(meta.read_text())
    assert metadata["stepbuild.pushed"] == digests
    assert metadata["containerimage.digest"] == digests[refs[0]]
    assert metadata["image.name"] == ",".join(refs)
    # The store has the names too (buildx's image exporter names the image).
    assert sb("inspect", refs[1]).returncode == 0


def test_type_image_push_true_and_images_digests(sb: Stepbuild, work: Path,
                                                 plain_registry: RunningRegistry) -> None:
    context = write_context(work / "img", "FROM base\nRUN echo image > /image\n")
    ref = f"{plain_registry.host}/outputs/img:1"
    kept = sb.build(context, "-q", "-o", "type=image,name=only-local:1")  # push=false
    built = sb.build(context, "-q", "-t", "tagged-img", "-o", f"type=image,name={ref},push=true")
    pushed = built.stdout.strip()
    assert pushed == skopeo("inspect", "--tls-verify=false", f"docker://{ref}")["Digest"]
    local = json.loads(sb("inspect", "tagged-img").stdout)["digest"]
    assert local == kept.stdout.strip() != pushed  # the registry holds other layer blobs
    lines = sb("images", "--digests").stdout.splitlines()
    assert lines[0].split() == ["NAME", "LOCAL", "DIGEST", "SIZE", "PUSHED", "DIGEST",
                                "PUSHED", "TO"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    # Every name of the image shows its push: a push is a fact about the image.
    for name in ("tagged-img", ref, "only-local:1"):
        assert rows[name][1] == local and rows[name][-2:] == [pushed, ref]
    assert rows["base"][-2:] == ["-", "-"]  # never pushed
    short = sb("images").stdout.splitlines()
    assert short[0].split() == ["NAME", "DIGEST", "SIZE", "PLATFORMS"]  # without --digests


# --- annotations -------------------------------------------------------------------------------


def test_annotations_where_buildx_puts_them(sb: Stepbuild, work: Path, tmp_path: Path,
                                            plain_registry: RunningRegistry) -> None:
    context = write_context(work / "ann", "FROM base\nRUN echo ann > /ann\n")
    ref = f"{plain_registry.host}/outputs/ann:1"
    layout = tmp_path / "layout"
    sb.build(context, "-q", "-t", ref, "--push",
             "--annotation", "org.opencontainers.image.revision=abc123",
             "--annotation", "manifest:org.opencontainers.image.source=https://example.com/x",
             "--annotation", "index:com.example.index=i",
             "--annotation", "manifest-descriptor:com.example.entry=e",
             "-o", f"type=oci-layout,dest={layout}")
    wanted = {"org.opencontainers.image.revision": "abc123",
              "org.opencontainers.image.source": "https://example.com/x"}
    local = json.loads(sb("inspect", ref).stdout)["manifest"]["annotations"]
    assert local.items() >= wanted.items()
    assert "org.opencontainers.image.base.digest" in local  # ours stay beside them
    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{ref}")
    assert raw["annotations"] == local
    index = json.loads((layout / "index.json").read_text())
    assert index["annotations"] == {"com.example.index": "i"}
    (entry,) = index["manifests"]
    assert entry["annotations"] == {"com.example.entry": "e",
                                    "org.opencontainers.image.ref.name": ref}
    blob = layout / "blobs" / "sha256" / entry["digest"].removeprefix("sha256:")
    assert json.loads(blob.read_text())["annotations"] == local


def test_bad_annotations_are_usage_errors(sb: Stepbuild, context: Path) -> None:
    for args, words in [(("--annotation", "index:k=v"), ("--annotation", "index.json")),
                        (("--annotation", "nokey"), ("--annotation", "KEY=VALUE")),
                        (("--annotation", "indx:k=v"), ("--annotation", "unknown type")),
                        (("--label", "novalue"), ("--label",))]:
        assert_clear_error(sb.build(context, *args, check=False), 2, *words)


@pytest.fixture(autouse=True, scope="module")
def _tools() -> Iterator[None]:
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo missing: apt-get install skopeo")
    yield
