"""No-op rebuilds through the whole-build fingerprint (fingerprint.py), with real builds.

A replay must print exactly what a full no-op build prints, and must never happen when a full
build could give another image: a changed file (even during the build), a rebuilt base, a
build FROM its own tag, a URL source, a build arg from the environment, a removed result.

Files written less than 2 s before a build make it "racy" (not recorded), so every context
here is left to settle before the build that should be recorded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.integration.builds import (
    PROJECT,
    Stepbuild,
    step_lines,
    store_with_base,
    write_context,
)
from tests.local_http import LocalHTTPServer

pytestmark = pytest.mark.root

REPLAYED = "nothing changed since the last build"
SETTLE = 2.1  # fingerprint.RACY_WINDOW_NS, and a little


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("noop")


@pytest.fixture(scope="module")
def sb(work: Path) -> Stepbuild:
    return store_with_base(work, "store")


def settled(context: Path) -> Path:
    time.sleep(SETTLE)
    return context


def build(sb: Stepbuild, context: Path, *args: str, tag: str = "app",
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return sb("build", "-v", "-t", tag, *args, str(context), env=env)


def replayed(result: subprocess.CompletedProcess[str]) -> bool:
    return REPLAYED in result.stderr


def test_a_replay_prints_what_a_full_no_op_build_prints(sb: Stepbuild, work: Path) -> None:
    context = settled(write_context(work / "same", (
        "FROM base\nRUN echo one > /one\nCOPY f /f\nENV A=1\nMAINTAINER someone\n"), {"f": "x"}))
    first = build(sb, context)
    assert step_lines(first.stderr) == ["DONE", "DONE"] and not replayed(first)
    shutil.rmtree(sb.root / "fingerprints")  # the next no-op takes the full path
    full = sb.build(context, "-t", "app")
    again = sb.build(context, "-t", "app")
    assert (again.stdout, again.stderr) == (full.stdout, full.stderr)
    assert "MAINTAINER" in again.stderr and step_lines(again.stderr) == ["CACHED", "CACHED"]
    assert replayed(build(sb, context))
    assert sb.run("app", "cat", "/one", "/f") == "one\nx"
    quiet = sb.build(context, "-q", "-t", "app")  # -q shares the record
    assert quiet.stdout == full.stdout and quiet.stderr.startswith("warning")


def test_a_changed_file_is_built_again(sb: Stepbuild, work: Path) -> None:
    context = settled(write_context(work / "changed", "FROM base\nCOPY f /f\n", {"f": "old"}))
    build(sb, context)
    assert replayed(build(sb, context))
    (context / "f").write_text("new")
    result = build(sb, context)
    assert step_lines(result.stderr) == ["DONE"] and not replayed(result)
    assert sb.run("app", "cat", "/f") == "new"


def test_a_file_changed_during_the_build_is_seen_by_the_next_one(sb: Stepbuild,
                                                                  work: Path) -> None:
    # The fingerprint is taken before the build reads anything: a file changed after its COPY
    # read it must make the next build a miss, never a replay of the old content.
    context = settled(write_context(work / "during", "FROM base\nCOPY f /f\nRUN sleep 2\n",
                                    {"f": "before"}))
    env = {**os.environ, "STEPBUILD_ROOT": str(sb.root), "PYTHONPATH": str(PROJECT)}
    proc = subprocess.Popen([sys.executable, "-m", "stepbuild", "build", "-t", "app",
                             str(context)], env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "RUN sleep 2" in line:  # the COPY is done
            (context / "f").write_text("after!")
            break
    proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert sb.run("app", "cat", "/f") == "before"
    result = build(sb, context)
    assert not replayed(result) and step_lines(result.stderr)[0] == "DONE"
    assert sb.run("app", "cat", "/f") == "after!"


def test_a_rebuilt_base_is_used(sb: Stepbuild, work: Path) -> None:
    def make_base(version: str) -> None:
        ctx = write_context(work / f"base-{version}", f"FROM base\nRUN echo {version} > /v\n")
        sb.build(ctx, "-q", "-t", "versioned")

    make_base("v1")
    context = settled(write_context(work / "on-base", "FROM versioned\nRUN cat /v > /copy\n"))
    build(sb, context)
    assert replayed(build(sb, context))
    make_base("v2")
    result = build(sb, context)
    assert not replayed(result) and step_lines(result.stderr) == ["DONE"]
    assert sb.run("app", "cat", "/copy") == "v2\n"


def test_a_build_from_its_own_tag_is_never_replayed(sb: Stepbuild, work: Path) -> None:
    sb("tag", "base", "selfie")
    context = settled(write_context(work / "self", "FROM selfie\nRUN echo x >> /count\n"))
    for _ in range(3):
        result = build(sb, context, tag="selfie")
        assert not replayed(result) and step_lines(result.stderr) == ["DONE"]
    assert sb.run("selfie", "cat", "/count") == "x\nx\nx\n"


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            hits.append(self.path)
            body = f"fetch {len(hits)}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with LocalHTTPServer(Handler) as http:
        yield http.url, hits


def test_a_url_source_is_never_replayed(sb: Stepbuild, work: Path,
                                        server: tuple[str, list[str]]) -> None:
    url, hits = server
    context = settled(write_context(work / "url", f"FROM base\nADD {url}/data /data\n"))
    for _ in range(2):
        assert not replayed(build(sb, context))
    assert len(hits) == 2  # asked again, as a full build does
    assert sb.run("app", "cat", "/data") == "fetch 2\n"


def test_a_build_arg_from_the_environment_counts(sb: Stepbuild, work: Path) -> None:
    context = settled(write_context(work / "env", "FROM base\nARG X\nRUN echo $X > /x\n"))
    build(sb, context, "--build-arg", "X", env={"X": "1"})
    assert replayed(build(sb, context, "--build-arg", "X", env={"X": "1"}))
    result = build(sb, context, "--build-arg", "X", env={"X": "2"})
    assert not replayed(result) and step_lines(result.stderr) == ["DONE"]
    assert sb.run("app", "cat", "/x") == "2\n"


def test_a_removed_result_is_built_again(sb: Stepbuild, work: Path) -> None:
    context = settled(write_context(work / "removed", "FROM base\nRUN echo r > /r\n"))
    build(sb, context)
    assert replayed(build(sb, context))
    sb("rmi", "app")
    result = build(sb, context)
    assert not replayed(result)
    assert "app:latest" in sb("images").stdout or "app " in sb("images").stdout
    assert sb.run("app", "cat", "/r") == "r\n"
