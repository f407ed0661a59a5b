"""docker's small conventions on the command line (issue 14): `-t` checked as docker's
reference parser does before anything starts, `--no-cache-filter` lists, `--version` and
`stepbuild version`, the top-level `--help` and each command's examples, `Containerfile` as a
default name and `.containerignore`. Real processes where the CLI's own output is checked."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from stepbuild.cli.build_flags import check_tags, no_cache_filter
from stepbuild.cli.help_text import EXAMPLES
from stepbuild.errors import UsageError
from stepbuild.frontend.source import read_stepfile
from stepbuild.sources.ignore import candidates, ignore_file

PROJECT = Path(__file__).resolve().parents[3]
DIGEST = "sha256:" + "0123456789abcdef" * 4


def stepbuild(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stepbuild", *args], cwd=cwd or PROJECT,
                          capture_output=True, text=True, check=False,
                          env={"PYTHONPATH": str(PROJECT), "PATH": "/usr/bin:/bin"})


# --- -t ----------------------------------------------------------------------------------------

VALID_TAGS = [
    "app", "app:1", "docker/docker", "library/debian", "localhost/debian",
    "localhost:5000/team/app:v1.2", "127.0.0.1:5000/docker/docker", "192.168.0.1:8/debian",
    "[fc00::1]:5000/docker:latest", "registry.example.com/a/b/c:1",
    "LOCALDOMAIN/debian",  # an upper-case first component is a host, as docker reads it
    "a__b", "a-b_c.d", "a---b", "app:_private", "app:X.Y-z", "app:" + "t" * 128,
    "docker.io/library/busybox:1.36",
]


@pytest.mark.parametrize("name", VALID_TAGS)
def test_docker_accepts_these_tags_and_so_do_we(name: str) -> None:
    check_tags([name])


INVALID_TAGS = {
    "App:1": "must be lower case",
    "docker/Docker": "must be lower case",
    "-docker": "invalid repository name",
    "-docker/docker": "invalid repository name",
    "a___b": "invalid repository name",
    "a..b": "invalid repository name",
    "app//x": "invalid repository name",
    "app/": "invalid repository name",
    "/app": "invalid repository name",
    "ap p": "invalid repository name",
    "https://github.com/docker/docker": "invalid registry host",
    "localhost:5000/": "empty repository name",
    "app:": "empty tag",
    "app:-x": "cannot start with",
    "app:.x": "cannot start with",
    "app:" + "t" * 129: "longer than 128 characters",
    "app:1:2": "invalid tag",
    "app:é": "invalid tag",
    "0123456789abcdef" * 4: "64-digit hexadecimal",
    "": "empty",
    "app@" + DIGEST: "cannot contain a digest",
    "app:1@" + DIGEST: "cannot contain a digest",
    "a/" + "b" * 255: "longer than 255 characters",
}


@pytest.mark.parametrize(("name", "problem"), INVALID_TAGS.items(),
                         ids=[n[:40] or "empty" for n in INVALID_TAGS])
def test_docker_refuses_these_tags_and_so_do_we(name: str, problem: str) -> None:
    with pytest.raises(UsageError) as caught:
        check_tags(["ok:1", name])
    assert caught.value.message.startswith(f'invalid tag "{name}": ')
    assert problem in caught.value.message
    assert caught.value.exit_code == 2 and caught.value.hint


def test_a_bad_tag_fails_the_build_before_the_context_is_even_looked_at(
        tmp_path: Path) -> None:
    result = stepbuild("--root", str(tmp_path / "store"), "build", "-t", "App:1",
                       str(tmp_path / "no-such-context"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0] == (
        "stepbuild: error: invalid tag \"App:1\": repository name 'App' must be lower case")
    assert not (tmp_path / "store").exists()  # nothing was opened


# --- --no-cache-filter --------------------------------------------------------------------------


def test_no_cache_filter_is_repeatable_and_comma_separated() -> None:
    assert no_cache_filter([]) == ()
    assert no_cache_filter(["deps", "test,lint", "deps"]) == ("deps", "test", "lint")
    assert no_cache_filter([" a , b "]) == ("a", "b")


@pytest.mark.parametrize("value", ["", "a,", ",a", "a,,b"])
def test_an_empty_stage_name_is_a_usage_error(value: str) -> None:
    with pytest.raises(UsageError):
        no_cache_filter([value])


# --- --version ----------------------------------------------------------------------------------


def test_version_comes_from_the_package_metadata() -> None:
    expected = f"stepbuild {version('stepbuild')}\n"
    for args in (["--version"], ["version"]):
        result = stepbuild(*args)
        assert (result.returncode, result.stdout, result.stderr) == (0, expected, "")


# --- --help -------------------------------------------------------------------------------------


def test_top_level_help_says_what_it_is_how_to_use_it_and_what_it_returns() -> None:
    result = stepbuild("--help")
    assert result.returncode == 0
    text = result.stdout
    assert "builds container images from a Stepfile" in text
    for section in ("common commands:", "the store:", "exit status:", "environment:",
                    "shell completion:"):
        assert f"\n{section}\n" in text
    for example in ("stepbuild build -t app:1 .", "stepbuild run app:1", "stepbuild push",
                    "stepbuild images"):
        assert example in text
    for variable in ("STEPBUILD_ROOT", "STEPBUILD_STALL_TIMEOUT", "SOURCE_DATE_EPOCH",
                     "REGISTRY_AUTH_FILE", "XDG_DATA_HOME"):
        assert variable in text
    assert "The `stepbuild` command line" not in text  # not the module's docstring
    assert "{parse,build" not in text  # commands are listed once, with their help


def test_the_environment_the_help_names_is_what_the_code_reads() -> None:
    """Every STEPBUILD_* variable the package reads is in the help (and no other)."""
    import re

    read = set()
    for path in (PROJECT / "stepbuild").rglob("*.py"):
        read |= set(re.findall(r"environ(?:\.get)?\(?\[?\"(STEPBUILD_[A-Z_]+)\"",
                               path.read_text()))
    helped = set(re.findall(r"\b(STEPBUILD_[A-Z_]+)\b", stepbuild("--help").stdout))
    assert read and read == helped


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_each_command_help_has_examples(command: str) -> None:
    result = stepbuild(command, "--help")
    assert result.returncode == 0
    assert "example" in result.stdout
    assert f"stepbuild {command}" in result.stdout.split("example", 1)[1]


def test_every_command_has_examples() -> None:
    from stepbuild.cli.main import _argument_parser

    parser = _argument_parser()
    [commands] = [a for a in parser._actions if hasattr(a, "choices") and a.choices
                  and "build" in a.choices]
    missing = {name for name, sub in commands.choices.items() if not sub.epilog}
    assert missing == set()


# --- default file names -------------------------------------------------------------------------


def test_containerfile_comes_after_stepfile_and_before_dockerfile(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM docker\n")
    assert read_stepfile(None, str(tmp_path))[1] == str(tmp_path / "Dockerfile")
    (tmp_path / "Containerfile").write_text("FROM container\n")
    assert read_stepfile(None, str(tmp_path)) == ("FROM container\n",
                                                  str(tmp_path / "Containerfile"))
    assert '(from "container")' in stepbuild("parse", str(tmp_path)).stdout
    (tmp_path / "Stepfile").write_text("FROM step\n")
    assert '(from "step")' in stepbuild("parse", str(tmp_path)).stdout


def test_ignore_files_beside_the_file_then_in_the_context_stepignore_first(
        tmp_path: Path) -> None:
    stepfile = tmp_path / "build" / "Containerfile"
    assert [str(p.relative_to(tmp_path)) for p in candidates(tmp_path, stepfile)] == [
        "build/Containerfile.stepignore", "build/Containerfile.containerignore",
        "build/Containerfile.dockerignore",
        ".stepignore", ".containerignore", ".dockerignore"]
    (tmp_path / ".dockerignore").write_text("a\n")
    assert ignore_file(tmp_path, stepfile) == tmp_path / ".dockerignore"
    (tmp_path / ".containerignore").write_text("b\n")  # Buildah reads it before .dockerignore
    assert ignore_file(tmp_path, stepfile) == tmp_path / ".containerignore"
    stepfile.parent.mkdir()
    (stepfile.parent / "Containerfile.dockerignore").write_text("c\n")
    assert ignore_file(tmp_path, stepfile) == stepfile.parent / "Containerfile.dockerignore"
