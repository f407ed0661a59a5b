"""The two builders of the differential suite, each with a private store and the same base.

Once per session: the busybox rootfs tarball (scripts/make-busybox-rootfs.sh) becomes the image
`base` in a stepbuild store of the session's own (FROM scratch + ADD, the integration tests'
`base_image`), which is exported as an OCI archive and pulled from that archive into a Buildah
storage of the session's own. Both then resolve `FROM base` to the same layers and config.
Nothing touches the host's stores, and nothing is fetched from a network.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.integration.builds import PROJECT, Stepbuild, base_image
from tests.local_http import LocalHTTPServer

CASES = Path(__file__).parent / "cases"


@dataclass
class Buildah:
    """`buildah` bound to a private storage (vfs: nothing to mount on the host)."""

    root: Path

    def argv(self, *args: str) -> list[str]:
        binary = shutil.which("buildah")
        if binary is None:
            pytest.fail("buildah is not installed: apt-get install buildah (scripts/setup.sh)")
        return [binary, "--root", str(self.root / "storage"), "--runroot",
                str(self.root / "run"), "--storage-driver", "vfs", *args]

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.argv(*args), capture_output=True, text=True,
                                timeout=timeout, check=False)
        if result.returncode != 0:
            raise AssertionError(f"buildah {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result


@dataclass
class Builders:
    stepbuild: Stepbuild
    buildah: Buildah

    def stepbuild_environ(self) -> dict[str, str]:
        """What `Stepbuild` runs `python -m stepbuild` with: its store, this tree's code."""
        return {**os.environ, "STEPBUILD_ROOT": str(self.stepbuild.root),
                "PYTHONPATH": str(PROJECT)}


@pytest.fixture(scope="session")
def builders(tmp_path_factory: pytest.TempPathFactory) -> Builders:
    work = tmp_path_factory.mktemp("compat")
    sb = Stepbuild(work / "stepbuild-store")
    base_image(sb, work)
    archive = work / "base.tar"
    sb("export", "-o", f"type=oci,dest={archive}", "base")
    buildah = Buildah(work / "buildah")
    buildah("pull", "-q", f"oci-archive:{archive}")  # named localhost/base:latest by the archive
    return Builders(sb, buildah)


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a request line per ADD would only clutter pytest's output


@pytest.fixture(scope="session")
def cases_url() -> Iterator[str]:
    """cases/ over HTTP on 127.0.0.1, for ADD of URLs: `{http}` in a case's build_args."""
    with LocalHTTPServer(functools.partial(QuietFiles, directory=str(CASES))) as server:
        yield server.url
