"""docker's cache conventions on `stepbuild build`, for real (issue 14).

- `--cache-to ...,ignore-error=true` to a registry that is not there (an unused port): the
  build warns in one line naming --cache-to and its ref and succeeds, its digest printed;
  without ignore-error it fails (exit 1) with an error naming --cache-to, the ref and the
  cause, and the image stays tagged.
- `--cache-from REF` (a bare reference, as buildx reads it) imports from a real registry:
  a fresh store's build is all CACHED.
- `--no-cache-filter STAGE`: that stage's RUN runs again (its output shows), the other stage
  is CACHED.
- Completion of image names from `stepbuild images` (bash, the real CLI on PATH).
- A context with only a Containerfile builds, and its .containerignore applies (before a
  .dockerignore), as Buildah reads them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration import registry_fixture
from tests.integration.builds import (
    EPOCH,
    PROJECT,
    Stepbuild,
    assert_clear_error,
    build_app,
    step_lines,
    store_with_base,
    write_context,
)

pytestmark = pytest.mark.root

plain_registry = registry_fixture.plain_registry

STEPFILE = (
    "FROM base\n"
    "RUN echo one > /one\n"
    "COPY data.txt /data.txt\n"
    "RUN cat /one /data.txt > /both\n"
)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache-flags")


@pytest.fixture(scope="module")
def store(work: Path) -> Stepbuild:
    return store_with_base(work, "a", *EPOCH)


def unused_registry() -> str:
    """A registry reference on 127.0.0.1 at a port nothing listens on (a registry that is
    down)."""
    return f"127.0.0.1:{registry_fixture.free_port()}/flags/app:cache"


def test_cache_to_ignore_error_warns_and_the_build_succeeds(work: Path,
                                                            store: Stepbuild) -> None:
    context = write_context(work / "ctx-ignore", STEPFILE, {"data.txt": "ignore\n"})
    ref = unused_registry()
    result = store.build(context, "-t", "ignored", *EPOCH, "--stall-timeout", "5",
                         "--cache-to", f"type=registry,ref={ref},ignore-error=true")
    assert result.stdout.strip().startswith("sha256:")
    warning = [line for line in result.stderr.splitlines() if "--cache-to" in line]
    assert len(warning) == 1 and ref in warning[0] and "ignore-error" in warning[0], \
        result.stderr
    assert store("inspect", "ignored").returncode == 0


def test_failed_cache_export_names_cache_to_and_keeps_the_tag(work: Path,
                                                             store: Stepbuild) -> None:
    context = write_context(work / "ctx-fail", STEPFILE, {"data.txt": "fail\n"})
    ref = unused_registry()
    result = store.build(context, "-t", "still-tagged", *EPOCH, "--cache-to",
                         f"type=registry,ref={ref}", check=False)
    assert_clear_error(result, 1, "--cache-to", f"ref={ref}", "cannot export the cache",
                       "tagged")
    error = result.stderr[result.stderr.index("stepbuild: error:"):]
    assert error.splitlines()[0].count(ref) == 1  # the ref once, then the cause
    assert result.stdout == ""  # no digest: the build did not succeed
    assert store("inspect", "still-tagged").returncode == 0  # the hint's promise


def test_failed_local_cache_export_names_its_dest(work: Path, store: Stepbuild) -> None:
    context = write_context(work / "ctx-local", STEPFILE, {"data.txt": "local\n"})
    not_a_dir = work / "a-file"
    not_a_dir.write_text("x")
    result = store.build(context, *EPOCH, "--cache-to", f"type=local,dest={not_a_dir}",
                         check=False)
    assert_clear_error(result, 1, "--cache-to", f"dest={not_a_dir}")
    ok = store.build(context, *EPOCH, "--cache-to",
                     f"type=local,dest={not_a_dir},ignore-error=true")
    assert ok.stdout.strip().startswith("sha256:")


def test_bare_cache_from_ref_imports_every_step(work: Path, store: Stepbuild,
                                                plain_registry: registry_fixture.RunningRegistry
                                                ) -> None:
    context = write_context(work / "ctx-bare", STEPFILE, {"data.txt": "bare\n"})
    ref = f"{plain_registry.host}/flags/bare:cache"
    exported, stderr = build_app(store, context, "--cache-to", f"type=registry,ref={ref}")
    assert "DONE" in step_lines(stderr)
    fresh = store_with_base(work, "fresh", *EPOCH)
    other = write_context(work / "ctx-bare-elsewhere", STEPFILE, {"data.txt": "bare\n"})
    imported, stderr = build_app(fresh, other, "--cache-from", ref)  # bare: type=registry
    assert step_lines(stderr) == ["CACHED"] * 3, stderr
    assert imported == exported


def test_bare_path_is_read_as_a_reference(work: Path, store: Stepbuild) -> None:
    context = write_context(work / "ctx-path", STEPFILE, {"data.txt": "path\n"})
    result = store.build(context, "--cache-from", "./Cache", check=False)
    assert_clear_error(result, 2, "--cache-from", "type=local,src=DIR")


MULTISTAGE = (
    "FROM base AS deps\n"
    "RUN echo deps-ran-$(cat /proc/sys/kernel/random/uuid) | tee /deps\n"
    "FROM base AS app\n"
    "RUN echo app-ran | tee /app\n"
    "COPY --from=deps /deps /deps\n"
)


def test_no_cache_filter_runs_that_stage_again(work: Path, store: Stepbuild) -> None:
    context = write_context(work / "ctx-filter", MULTISTAGE)
    first = store.build(context, *EPOCH, "-t", "filtered")
    assert step_lines(first.stderr, "deps") == ["DONE"]
    before = store.run("filtered", "cat", "/deps").strip()
    again = store.build(context, *EPOCH, "-t", "filtered", "--no-cache-filter", "deps")
    assert step_lines(again.stderr, "deps") == ["DONE"]  # ran again: a new random id...
    after = store.run("filtered", "cat", "/deps").strip()
    assert after.startswith("deps-ran-") and after != before
    assert after in again.stderr  # ...and its output shows
    # app's RUN hit; its COPY --from=deps reads a new /deps, so it runs (a new input).
    assert step_lines(again.stderr, "app") == ["CACHED", "DONE"]
    assert "app-ran\n" not in again.stderr  # its RUN did not run: no output line


def test_no_cache_filter_of_an_unknown_stage_is_an_error(work: Path, store: Stepbuild) -> None:
    context = write_context(work / "ctx-filter-typo", MULTISTAGE)
    result = store.build(context, *EPOCH, "--no-cache-filter", "dpes", check=False)
    assert_clear_error(result, 2, "--no-cache-filter", "dpes", "deps, app")


def test_completion_offers_the_store_images(work: Path, store: Stepbuild) -> None:
    """bash completes the image of `stepbuild run ba` with the names `stepbuild images` lists
    (the real CLI, on PATH as `stepbuild`)."""
    bin_dir = work / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "stepbuild"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m stepbuild \"$@\"\n")
    shim.chmod(0o755)
    script = store("completion", "bash").stdout
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "PYTHONPATH": str(PROJECT), "STEPBUILD_ROOT": str(store.root)}
    probe = (script + "\nCOMP_WORDS=(stepbuild run ba); COMP_CWORD=2;"
             " COMP_LINE='stepbuild run ba'; COMP_POINT=${#COMP_LINE}; _stepbuild;"
             " printf '%s\\n' \"${COMPREPLY[@]}\"")
    done = subprocess.run(["bash", "-c", probe], env=env, capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.split() == ["base"], done.stderr


def test_a_containerfile_and_its_containerignore_are_found(work: Path, store: Stepbuild) -> None:
    context = work / "ctx-containerfile"
    context.mkdir()
    (context / "Containerfile").write_text("FROM base\nCOPY . /ctx/\n")
    for name in ("kept", "secret", "docker-only"):
        (context / name).write_text(name)
    (context / ".containerignore").write_text("secret\n.*ignore\n")
    (context / ".dockerignore").write_text("docker-only\n")  # .containerignore wins
    store.build(context, *EPOCH, "-t", "containerfile")
    listed = store.run("containerfile", "ls", "-A", "/ctx").split()
    assert listed == ["Containerfile", "docker-only", "kept"]
