"""Helpers for build tests: run the real `stepbuild` CLI against a store of the test's own.

`Stepbuild(root)` runs `python -m stepbuild` with STEPBUILD_ROOT set to a private store;
`base_image(sb)` builds the busybox base (FROM scratch + ADD of the rootfs tarball made by
scripts/make-busybox-rootfs.sh) and tags it `base`, once per store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
ROOTFS_SCRIPT = PROJECT / "scripts" / "make-busybox-rootfs.sh"


@dataclass
class Stepbuild:
    """The CLI bound to one store directory."""

    root: Path

    def __call__(self, *args: str, check: bool = True, input: str | None = None,
                 env: dict[str, str] | None = None, timeout: float = 120
                 ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "STEPBUILD_ROOT": str(self.root), "PYTHONPATH": str(PROJECT),
                    **(env or {})}
        result = subprocess.run([sys.executable, "-m", "stepbuild", *args], env=full_env,
                                capture_output=True, text=True, input=input, timeout=timeout,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"stepbuild {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def build(self, context: Path, *args: str, check: bool = True
              ) -> subprocess.CompletedProcess[str]:
        return self("build", *args, str(context), check=check)

    def run(self, image: str, *command: str) -> str:
        return self("run", image, *command).stdout


def rootfs_tarball(directory: Path) -> Path:
    """busybox-rootfs.tar in `directory` (made by the project's script)."""
    tarball = directory / "busybox-rootfs.tar"
    if not tarball.exists():
        subprocess.run(["sh", str(ROOTFS_SCRIPT), str(tarball)], check=True)
    return tarball


def base_image(sb: Stepbuild, workdir: Path, *build_args: str) -> str:
    """Build the busybox base image into the store as `base`; return its name."""
    context = workdir / "base-context"
    if not (context / "Stepfile").exists():
        context.mkdir(parents=True, exist_ok=True)
        rootfs_tarball(context)
        (context / "Stepfile").write_text(
            "FROM scratch\nADD busybox-rootfs.tar /\nENV PATH=/bin:/usr/bin:/sbin:/usr/sbin\n"
            'CMD ["sh"]\n')
    sb.build(context, "-q", "-t", "base", *build_args)
    return "base"


EPOCH = ("--build-arg", "SOURCE_DATE_EPOCH=1700000000")  # same base and layers in every store


def store_with_base(work: Path, name: str, *build_args: str) -> Stepbuild:
    """A new store at work/name holding the busybox `base` (built with `build_args`)."""
    sb = Stepbuild(work / name)
    base_image(sb, work, *build_args)
    return sb


def build_app(sb: Stepbuild, context: Path, *args: str) -> tuple[str, str]:
    """(image digest, stderr) of a build tagged `app`, with EPOCH."""
    result = sb.build(context, "-t", "app", *EPOCH, *args)
    return result.stdout.strip().splitlines()[-1], result.stderr


def write_context(directory: Path, stepfile: str, files: dict[str, str] | None = None) -> Path:
    """A build context with a Stepfile and files (name → content)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Stepfile").write_text(stepfile)
    for name, content in (files or {}).items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return directory


def assert_clear_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """A failed command: exit status `code`, no traceback, each of `words` on stderr."""
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def step_lines(stderr: str, label: str = "") -> list[str]:
    """The progress lines that report a step's outcome: "CACHED" or "DONE ..." (of one stage
    of a multi-stage build when `label` is given)."""
    prefix = f"[{label}] " if label else ""
    outcomes = []
    for line in stderr.splitlines():
        if label and not line.startswith(prefix):
            continue
        words = line.removeprefix(prefix).split()
        if words and words[0] in ("CACHED", "DONE"):
            outcomes.append(words[0])
    return outcomes


@contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "4m") mounted at `path` (made here) for the block: a disk that
    fills up. Use it in the private mount namespace (fixture `private_mount_ns`)."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
