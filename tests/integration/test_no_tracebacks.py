"""Bad input meets one clear message, never a traceback (issue 11, item 13).

Each case runs the real CLI on a Stepfile (or command line) that once ended in a Python
traceback, or that the suite already knows to fail, and checks: the exit status (1 a build
failure, 2 a bad Stepfile or usage), exactly one `stepbuild: error:` line, starting with the
Stepfile location where there is one, and no `Traceback` anywhere on stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.builds import (
    Stepbuild,
    base_image,
    rootfs_tarball,
    small_tmpfs,
    write_context,
)

PASSWD_LOOP = "RUN rm /etc/passwd && ln -s /etc/passwd /etc/passwd\n"


@dataclass(frozen=True)
class Case:
    stepfile: str
    status: int
    where: str | None  # "LINE:COLUMN" of the Stepfile, or None for an error with no place
    words: tuple[str, ...]
    args: tuple[str, ...] = ()


CASES = {
    "uid-too-large": Case("FROM base\nUSER 4294967296\nRUN true\n", 1, "3:1",
                          ("uid 4294967296 is out of range",)),
    "uid-minus-one": Case("FROM base\nUSER 4294967295\nRUN true\n", 1, "3:1",
                          ("uid 4294967295 is out of range",)),
    "gid-too-large": Case("FROM base\nUSER 0:4294967296\nRUN true\n", 1, "3:1",
                          ("gid 4294967296 is out of range",)),
    "chown-uid-too-large": Case("FROM base\nCOPY --chown=4294967296 f /f\n", 2, "2:1",
                                ("--chown=4294967296", "uid 4294967296 is out of range")),
    "chown-gid-minus-one": Case("FROM base\nCOPY --chown=0:4294967295 f /f\n", 2, "2:1",
                                ("gid 4294967295 is out of range",)),
    "link-chown-uid-too-large": Case("FROM base\nCOPY --link --chown=4294967296 f /f\n", 2,
                                     "2:1", ("uid 4294967296 is out of range",)),
    "nul-in-run": Case("FROM base\nRUN echo a\0b\n", 2, "2:11", ("NUL character",)),
    "from-stage-missing-source": Case(
        "FROM base AS stage\nFROM base\nCOPY --from=stage /missing /x\n", 1, "3:1",
        ('/missing: no such file or directory in stage "stage"',)),
    "passwd-loop-run": Case(f"FROM base\n{PASSWD_LOOP}USER someone\nRUN true\n", 1, "4:1",
                            ("cannot read /etc/passwd in the image",)),
    "passwd-loop-chown": Case(f"FROM base\n{PASSWD_LOOP}COPY --chown=someone f /f\n", 1,
                              "3:1", ("--chown=someone", "cannot read /etc/passwd")),
    "unknown-user": Case("FROM base\nUSER ghost\nRUN true\n", 1, "3:1",
                         ("unable to find user ghost",)),
    "missing-base": Case("FROM no-such-image\nRUN true\n", 1, "1:1",
                         ("no-such-image",), ("--pull=never",)),
    "failing-run": Case("FROM base\nRUN exit 3\n", 1, "2", ("step failed with exit code 3",)),
    "unknown-stepfile-flag": Case("FROM base\nCOPY --doit=true f /f\n", 2, "2:6",
                                  ("unknown flag: --doit",)),
    "bad-command-line-flag": Case("FROM base\n", 2, None, ("--nope",), ("--nope",)),
}


@pytest.fixture(scope="module")
def sb(tmp_path_factory: pytest.TempPathFactory) -> Stepbuild:
    """One store with the busybox base for every case: none of them leaves a tag behind."""
    workdir = tmp_path_factory.mktemp("no-tracebacks")
    store = Stepbuild(workdir / "store")
    base_image(store, workdir)
    return store


@pytest.mark.parametrize("name", CASES)
def test_one_clear_message(sb: Stepbuild, tmp_path: Path, name: str) -> None:
    case = CASES[name]
    context = write_context(tmp_path / "context", case.stepfile, {"f": "x"})
    result = sb.build(context, "-q", *case.args, check=False)
    stderr = result.stderr
    assert "Traceback" not in stderr, stderr
    assert result.returncode == case.status, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("stepbuild: error:")]
    assert len(errors) == 1, stderr
    if case.where is not None:
        assert errors[0].startswith(f"stepbuild: error: {context}/Stepfile:{case.where}:"), stderr
    for word in case.words:
        assert word in stderr, stderr


def test_from_missing_source_has_no_context_hint(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "context", CASES["from-stage-missing-source"].stepfile)
    stderr = sb.build(context, "-q", check=False).stderr
    assert "build context" not in stderr and ".dockerignore" not in stderr, stderr


def test_debug_shows_the_traceback(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "context", CASES["uid-too-large"].stepfile)
    result = sb("--debug", "build", "-q", str(context), check=False)
    assert result.returncode == 1 and "Traceback" in result.stderr, result.stderr


def oci_layout_with_env(directory: Path, rootfs: Path, env: list[str]) -> Path:
    """An OCI layout of the `rootfs` tarball (one uncompressed layer) whose config sets `env`."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layer = rootfs.read_bytes()
    config = blob(json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Env": env},
        "rootfs": {"type": "layers", "diff_ids": [blob(layer)["digest"]]}}).encode())
    manifest = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(layer)}],
    }).encode())
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}))
    return directory


def test_nul_in_an_inherited_env_is_located(sb: Stepbuild, tmp_path: Path) -> None:
    # no Stepfile can hold a NUL any more, but a base image's config can
    rootfs = rootfs_tarball(sb.root.parent / "base-context")  # the base's: made already
    layout = oci_layout_with_env(tmp_path / "layout", rootfs, ["PATH=/bin", "X=a\u0000b"])
    context = write_context(tmp_path / "context", f"FROM oci-layout:{layout}:v1\nRUN true\n")
    result = sb.build(context, "-q", check=False)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("stepbuild: error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"stepbuild: error: {context}/Stepfile:"), result.stderr


def _one_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one `stepbuild: error:` line of a failed command (exit 1) without a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("stepbuild: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _store_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if "parse-cache" not in p.parts
            and "context-cache" not in p.parts and "fingerprints" not in p.parts}


@pytest.mark.usefixtures("private_mount_ns")
def test_a_full_store_while_capturing_a_layer(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small", "16m") as small:
        full = Stepbuild(small / "store")
        base_image(full, tmp_path)  # about 4 MB of the 16
        before = _store_files(full.root)
        # 9 MB fit in the step's upper dir; its 9 MB layer tar does not
        context = write_context(tmp_path / "context",
                                "FROM base\nRUN head -c 9000000 /dev/zero > /big\n")
        error = _one_error(full.build(context, "-q", check=False))
        assert error.startswith(f"stepbuild: error: {context}/Stepfile:2:1: no space left on"
                                " the store's filesystem"), error
        assert "stepbuild prune" in full.build(context, "-q", check=False).stderr
        assert _store_files(full.root) == before  # no blob, layer dir, record or tmp/ entry


@pytest.mark.usefixtures("private_mount_ns")
def test_a_full_destination_while_exporting(sb: Stepbuild, tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small", "1m") as small:
        dest = small / "out" / "base.tar"
        result = sb("export", "base", "--output", f"type=tar,dest={dest}", check=False)
        error = _one_error(result)
        assert error == f"stepbuild: error: cannot write {dest}: no space left on device" \
                        " (nothing half-written was left)", error
        assert os.listdir(dest.parent) == []
    assert os.listdir(sb.root / "tmp") == []
