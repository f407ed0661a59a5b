"""Differential suite: each case under cases/ is built by stepbuild and by Buildah from the same
`base`, and the two images must agree on every path and on the runtime config.

What is compared, per path: type, mode (with setuid/setgid/sticky), owner, symlink target,
content hash, device numbers and hard-link group; per config: the keys in CONFIG_KEYS. What is
left out, and why, is in IGNORED below and in README.md. Where Buildah and BuildKit disagree,
BuildKit is the reference: a case's expect.toml lists each such difference as a deviation
(the key, Buildah's value, BuildKit's value, the reason); the test checks that Buildah still
gives exactly that value and then expects BuildKit's from us.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.compat.conftest import CASES, Builders
from tests.compat.images import Image, read_dir_transport, read_oci_layout

pytestmark = [pytest.mark.root, pytest.mark.slow]

ABSENT = "absent"

CONFIG_KEYS = ("Env", "WorkingDir", "User", "Volumes", "ExposedPorts", "Labels", "Cmd",
               "Entrypoint", "Shell", "StopSignal", "Healthcheck", "OnBuild")

# Left out of the comparison, each with its reason:
# - mtimes of paths and "created" of the config and history: the time of each build.
# - "history": free text, and Buildah (--layers=false) squashes a build into one layer.
# - the layer count and digests: Buildah's --layers=false commits one layer per build (faster);
#   the flattened trees are what a container sees, and what must agree.
# - the label io.buildah.version: Buildah stamps its own version on every image.
# - an empty Cmd, Volumes, ... versus none: Buildah writes "Cmd": [] where ENTRYPOINT reset it,
#   BuildKit leaves it out; both mean "not set".
# - Buildah's RUN mount stubs (BUILDAH_STUBS): it leaves the empty /etc/hostname and /run it
#   made to mount over, where the base lacks them; BuildKit removes its stubs after a RUN.
# - the root directory "/" itself: no layer tool agrees on whether to write an entry for it.
BUILDAH_LABELS = ("io.buildah.version",)
BUILDAH_STUBS = {"/etc/hostname": "file 0755 0:0 sha256:e3b0c44298fc1c14", "/run": "dir 0755 0:0"}


@dataclass
class Case:
    """A directory of cases/: its Dockerfile, context files and optional expect.toml."""

    name: str
    directory: Path
    build_args: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)  # id → file in the case dir
    target: str | None = None
    deviations: list[dict[str, str]] = field(default_factory=list)
    buildah_dockerfile: str = "Dockerfile"

    @classmethod
    def load(cls, directory: Path) -> Case:
        expect_file = directory / "expect.toml"
        expect: dict[str, Any] = {}
        if expect_file.exists():
            expect = tomllib.loads(expect_file.read_text())
        case = cls(directory.name, directory, expect.get("build_args", {}),
                   expect.get("secrets", {}), expect.get("target"),
                   expect.get("deviation", []))
        if "buildah_dockerfile" in expect:
            # Only with a reason: Buildah 1.28 lacks the feature, and the file says the same
            # thing without it.
            assert expect.get("buildah_dockerfile_reason"), f"{case.name}: say why"
            case.buildah_dockerfile = expect["buildah_dockerfile"]
        for deviation in case.deviations:
            assert set(deviation) == {"key", "buildah", "buildkit", "reason"}, deviation
        return case

    def flags(self, cases_url: str) -> list[str]:
        flags = []
        for key, value in self.build_args.items():
            flags += ["--build-arg", f"{key}={value.replace('{http}', cases_url)}"]
        for secret_id, source in self.secrets.items():
            flags += ["--secret", f"id={secret_id},src={self.directory / source}"]
        if self.target:
            flags += ["--target", self.target]
        return flags


def case_dirs() -> list[Path]:
    return sorted(p for p in CASES.iterdir() if (p / "Dockerfile").is_file())


@pytest.mark.parametrize("directory", case_dirs(), ids=lambda p: p.name)
def test_same_image_as_buildah(directory: Path, builders: Builders, cases_url: str,
                               tmp_path: Path) -> None:
    case = Case.load(directory)
    ours, theirs = build_both(case, builders, case.flags(cases_url), tmp_path)
    expected = facts(theirs)
    for key in [k for k, v in BUILDAH_STUBS.items() if expected.get(k) == v]:
        if not any(p.startswith(key + "/") for p in expected):
            expected.pop(key)
    for deviation in case.deviations:
        key = deviation["key"]
        assert expected.get(key, ABSENT) == deviation["buildah"], (
            f"{case.name}: Buildah no longer gives the value this deviation records for {key}; "
            f"look again: {deviation['reason']}")
        expected[key] = deviation["buildkit"]
        if deviation["buildkit"] == ABSENT:
            del expected[key]
    diff = differences(facts(ours), expected)
    assert not diff, f"{case.name}: stepbuild's image differs:\n" + "\n".join(diff)


def build_both(case: Case, builders: Builders, flags: list[str], tmp_path: Path
               ) -> tuple[Image, Image]:
    """Both builds at once (two cores, two builders), then both images read back."""
    ours_out, theirs_out = tmp_path / "stepbuild-oci", tmp_path / "buildah-dir"
    tag = f"compat-{case.name}"
    ours = subprocess.Popen(
        [sys.executable, "-m", "stepbuild", "build", "-q", "-f", str(case.directory / "Dockerfile"),
         "-t", tag, "-o", f"type=oci-layout,dest={ours_out}", *flags,
         str(case.directory)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=builders.stepbuild_environ())
    try:
        builders.buildah("bud", "--format", "docker", "--pull-never", "--isolation", "chroot",
                         "--layers=false", "-q", "-f",
                         str(case.directory / case.buildah_dockerfile), "-t", tag,
                         *flags, str(case.directory))
        builders.buildah("push", "-q", tag, f"dir:{theirs_out}")
        builders.buildah("rmi", tag)
    finally:
        out, err = ours.communicate(timeout=300)
    assert ours.returncode == 0, f"stepbuild build failed ({ours.returncode}):\n{out}\n{err}"
    return read_oci_layout(ours_out), read_dir_transport(theirs_out)


def facts(image: Image) -> dict[str, str]:
    """One flat map of what is compared: "/path" → entry, "config.Key" → its JSON."""
    result = {path: text for path, text in image.tree.items() if path != "/"}
    runtime = dict(image.config.get("config") or {})
    labels = {k: v for k, v in (runtime.get("Labels") or {}).items()
              if k not in BUILDAH_LABELS}
    runtime["Labels"] = labels
    for key in CONFIG_KEYS:
        value = runtime.get(key)
        if value not in (None, "", [], {}):
            result[f"config.{key}"] = json.dumps(value, sort_keys=True)
    return result


def differences(ours: dict[str, str], expected: dict[str, str]) -> list[str]:
    """Readable lines, one per key where the two disagree."""
    lines = []
    for key in sorted(set(ours) | set(expected)):
        mine, wanted = ours.get(key, ABSENT), expected.get(key, ABSENT)
        if mine != wanted:
            lines.append(f"{key}: stepbuild {mine} | expected {wanted}")
    return lines
