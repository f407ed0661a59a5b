"""Multi-stage builds: the stage graph, parallel stages, COPY --from, --target, ONBUILD."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from tests.integration.builds import PROJECT, Stepbuild, base_image, step_lines, write_context


@pytest.fixture()
def sb(tmp_path: Path) -> Stepbuild:
    stepbuild = Stepbuild(tmp_path / "store")
    base_image(stepbuild, tmp_path)
    return stepbuild


def records(sb: Stepbuild) -> list[dict]:
    return [json.loads(p.read_text()) for p in (sb.root / "cache").glob("*.json")]


def test_sample_builds_independent_stages_in_parallel(sb: Stepbuild, tmp_path: Path) -> None:
    context = tmp_path / "multistage"
    shutil.copytree(PROJECT / "samples" / "multistage", context)
    sb.build(context, "-t", "multi", "--jobs", "2")
    assert sb.run("multi") == "tool v1\n# Manual\nRun the tool.\n"
    runs = {r["created_by"].split("sleep 1 && ")[1][:4]: r for r in records(sb)
            if "sleep 1" in r["created_by"]}
    tools, docs = runs["echo"], runs["cat "]
    assert tools["started"] < docs["finished"] and docs["started"] < tools["finished"], (
        "the two independent stages did not overlap in time")

    (context / "docs" / "intro.md").write_text("# Manual\nNew text.\n")
    again = sb.build(context, "-t", "multi")
    assert step_lines(again.stderr, "tools") == ["CACHED"]
    assert step_lines(again.stderr, "docs") == ["DONE", "DONE"]
    assert step_lines(again.stderr, "2") == ["CACHED", "DONE"]
    assert sb.run("multi").endswith("New text.\n")


def test_target_builds_only_what_it_needs(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base AS a\nRUN echo a > /a\nFROM base AS unused\nRUN exit 1\n"
        "FROM a AS b\nRUN cat /a > /b\nFROM base\nRUN echo final\n"))
    result = sb.build(context, "--target", "b", "-t", "b")
    assert "exit 1" not in result.stderr and "echo final" not in result.stderr
    assert sb.run("b", "cat", "/b") == "a\n"


def test_copy_from_an_image_and_by_index(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\nRUN echo zero > /zero\n"
        "FROM scratch\nCOPY --from=0 /zero /zero\nCOPY --from=base /bin/busybox /busybox\n"))
    sb.build(context, "-t", "picked")
    manifest = json.loads(sb("inspect", "picked").stdout)["manifest"]
    assert len(manifest["layers"]) == 2


# A stage whose /app holds entries of several owners (issue 11 item 2).
OWNED_STAGE = (
    "FROM base AS src\n"
    "RUN mkdir -p /app/sub && echo f > /app/f && ln -s f /app/link && chown 124:125 /app"
    " && chown {file_owner} /app/f && chown 126:127 /app/sub && chown -h 128:129 /app/link\n")


def layer_owners(sb: Stepbuild, image: str, index: int) -> dict[str, str]:
    """"uid:gid mode" of each entry of one layer of the image, from its blob in the store."""
    digest = json.loads(sb("inspect", image).stdout)["manifest"]["layers"][index]["digest"]
    blob = sb.root / "blobs" / "sha256" / digest.removeprefix("sha256:")
    with tarfile.open(blob, "r:") as tar:
        return {m.name.rstrip("/"): f"{m.uid}:{m.gid} {m.mode:o}" for m in tar.getmembers()}


def test_copy_from_a_stage_keeps_the_owners(sb: Stepbuild, tmp_path: Path) -> None:
    # Docker, BuildKit (testCopyChownExistingDir) and Buildah keep a --from source's owners;
    # only --chown changes them. The destination directory a COPY makes is made as root.
    # Build context files become 0:0 whoever owns them on the host.
    context = write_context(tmp_path / "ctx", OWNED_STAGE.format(file_owner="123:123") + (
        "FROM base\nCOPY --from=src /app /app\nCOPY --from=src /app/f /single\n"
        "COPY --from=src --chown=7:8 /app /owned\nCOPY ctx.txt /ctx.txt\n"),
        {"ctx.txt": "c"})
    os.chown(context / "ctx.txt", 1234, 1235)
    sb.build(context, "-t", "kept")
    shown = sb.run("kept", "stat", "-c", "%n %u:%g", "/app", "/app/f", "/app/sub", "/app/link",
                   "/single", "/owned", "/owned/f", "/owned/sub", "/owned/link", "/ctx.txt")
    assert shown.splitlines() == [
        "/app 0:0", "/app/f 123:123", "/app/sub 126:127", "/app/link 128:129",
        "/single 123:123", "/owned 7:8", "/owned/f 7:8", "/owned/sub 7:8", "/owned/link 7:8",
        "/ctx.txt 0:0"]
    layer = layer_owners(sb, "kept", -4)  # COPY --from=src /app /app, as exported
    assert {name: layer[name].split()[0] for name in ("app/f", "app/sub", "app/link")} == {
        "app/f": "123:123", "app/sub": "126:127", "app/link": "128:129"}


def test_copy_from_an_image_keeps_the_owners(sb: Stepbuild, tmp_path: Path) -> None:
    stage = write_context(tmp_path / "stage", OWNED_STAGE.format(file_owner="123:123"))
    sb.build(stage, "-t", "owned-image")
    context = write_context(tmp_path / "ctx", "FROM scratch\nCOPY --from=owned-image /app/ /\n")
    sb.build(context, "-t", "from-image")
    assert layer_owners(sb, "from-image", -1) == {
        "f": "123:123 644", "sub": "126:127 755", "link": "128:129 777"}


def test_a_changed_owner_in_the_source_stage_is_not_a_stale_hit(sb: Stepbuild, tmp_path: Path
                                                               ) -> None:
    # The key of a COPY --from holds the source stage's state (its layers' diff_ids): a new
    # owner there is a new layer, so the COPY runs again.
    final = "FROM base\nCOPY --from=src /app/f /f\n"
    context = write_context(tmp_path / "ctx", OWNED_STAGE.format(file_owner="123:123") + final)
    sb.build(context, "-t", "owners")
    (context / "Stepfile").write_text(OWNED_STAGE.format(file_owner="321:322") + final)
    again = sb.build(context, "-t", "owners")
    assert step_lines(again.stderr, "src") == ["DONE"]
    assert step_lines(again.stderr, "1") == ["DONE"]
    assert sb.run("owners", "stat", "-c", "%u:%g", "/f") == "321:322\n"


@pytest.mark.parametrize(("stepfile", "message"), [
    ("FROM base AS a\nCOPY --from=b /x /x\nFROM base AS b\n",
     "stage 'b' is used before it is defined"),
    ("FROM base AS a\nCOPY --from=a /x /x\n", "stage 'a' is used before it is defined"),
    ("FROM base\nCOPY --from=nosuch /x /x\n", "no stage or image of that name"),
    ("FROM base\nCOPY --from=3 /x /x\n", "there is no stage 3"),
])
def test_bad_stage_references_are_errors_with_the_line(sb: Stepbuild, tmp_path: Path,
                                                       stepfile: str, message: str) -> None:
    result = sb.build(write_context(tmp_path / "ctx", stepfile), check=False)
    assert result.returncode != 0
    assert message in result.stderr and "Stepfile:2:" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_target_is_an_error(sb: Stepbuild, tmp_path: Path) -> None:
    result = sb.build(write_context(tmp_path / "ctx", "FROM base AS a\n"), "--target", "zz",
                      check=False)
    assert result.returncode == 2 and "target stage 'zz' could not be found" in result.stderr


def test_onbuild_triggers_run_once_in_the_child(sb: Stepbuild, tmp_path: Path) -> None:
    parent = write_context(tmp_path / "parent", (
        "FROM base\nONBUILD RUN echo first >> /log\nONBUILD COPY note.txt /note\n"))
    sb.build(parent, "-t", "parent")
    child = write_context(tmp_path / "child", "FROM parent\nRUN echo own >> /log\n",
                          {"note.txt": "from the child's context\n"})
    sb.build(child, "-t", "child")
    assert sb.run("child", "cat", "/log", "/note") == (
        "first\nown\nfrom the child's context\n")
    config = json.loads(sb("inspect", "child").stdout)["config"]["config"]
    assert "OnBuild" not in config
    grandchild = write_context(tmp_path / "grand", "FROM child\nRUN echo grand >> /log\n")
    sb.build(grandchild, "-t", "grand")
    assert sb.run("grand", "cat", "/log") == "first\nown\ngrand\n"  # not run a second time


def test_a_failing_stage_stops_the_steps_running_beside_it(sb: Stepbuild, tmp_path: Path
                                                           ) -> None:
    # Stage slow starts a long RUN; stage bad waits until it has started, then fails. The slow
    # RUN is killed (its "finished" mark never appears) and bad's error is the one reported
    # (issue 11, item 17). Without cancelling, the build would wait for the 60 s sleep.
    cache = "--mount=type=cache,target=/c,id=cancel-test,sharing=shared"
    context = write_context(tmp_path / "ctx", (
        f"FROM base AS slow\nRUN {cache} sh -c 'echo started > /c/s; sleep 60; "
        "echo finished > /c/f'\n"
        f"FROM base AS bad\nRUN {cache} sh -c 'while [ ! -e /c/s ]; do sleep 0.05; done; "
        "exit 7'\n"
        "FROM base\nCOPY --from=slow /etc/hostname /a\nCOPY --from=bad /etc/hostname /b\n"))
    result = sb.build(context, "--jobs", "2", check=False)
    assert result.returncode == 1
    assert "exit code 7" in result.stderr or "exit status 7" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    [data] = [p for p in (sb.root / "cache-mounts").glob("*/data") if (p / "s").exists()]
    assert not (data / "f").exists()
    assert not list((sb.root / "tmp").glob("step-*"))  # the killed step left nothing behind
