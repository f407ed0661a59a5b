"""Why did it rebuild? `build --explain`, rawjson `reason` and `stepbuild why`, for real
(issue 16, "Explain every miss").

Each test builds a Stepfile under a tag of its own, changes one thing, builds again with
--explain, and checks the exact `why:` line under the step that ran: a COPY's files (content,
mode, new, deleted; -v lists them all), an ARG, an ENV, the instruction text, the step before
it, the base image a name resolves to, and a colleague's team cache (--cache-to a shared
directory, --cache-from it in another store). Then: `stepbuild why` after the fact, the
rawjson field, a secret's value never saved, and the material pruned with its record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration import registry_fixture
from tests.integration.builds import (
    EPOCH,
    Stepbuild,
    assert_clear_error,
    store_with_base,
    write_context,
)

pytestmark = pytest.mark.root

plain_registry = registry_fixture.plain_registry


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("explain")


@pytest.fixture(scope="module")
def sb(work: Path) -> Stepbuild:
    return store_with_base(work, "store", *EPOCH)


def whys(stderr: str) -> list[str]:
    """The `why:` lines of a plain build log, in order (stage labels dropped)."""
    return [line.split("why: ", 1)[1] for line in stderr.splitlines() if "     why: " in line]


def explain(sb: Stepbuild, context: Path, tag: str, *args: str) -> list[str]:
    return whys(sb.build(context, "-t", tag, *EPOCH, "--explain", *args).stderr)


def test_first_build_is_not_in_the_store(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "first", "FROM base\nRUN echo first > /f\n")
    assert explain(sb, context, "first") == ["not in the store (no earlier build of this step)"]
    assert explain(sb, context, "first") == []  # all CACHED: nothing to explain


def test_copy_files_content_mode_new_deleted(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "copy", "FROM base\nCOPY . /app\nRUN ls /app > /list\n",
                            {"src/main.py": "print(1)\n", "run.sh": "echo\n", "old.txt": "x\n"})
    os.chmod(context / "run.sh", 0o644)
    explain(sb, context, "copy")
    (context / "src/main.py").write_text("print(2)\n")
    os.chmod(context / "run.sh", 0o755)
    (context / "src/util.py").write_text("pass\n")
    (context / "old.txt").unlink()
    assert explain(sb, context, "copy") == [
        "4 files changed: old.txt (deleted), run.sh (mode 0644 → 0755), src/main.py (content),"
        " and 1 more (-v lists them)",
        "the step before it (Stepfile:2) changed"]
    assert sb("why", "-v", "copy").stdout.splitlines()[1] == (
        "Stepfile:2 COPY . /app — 4 files changed: old.txt (deleted), run.sh (mode 0644 →"
        " 0755), src/main.py (content), src/util.py (new)")


def test_copy_verbose_lists_every_file(sb: Stepbuild, work: Path) -> None:
    files = {f"f{n}.txt": "1\n" for n in range(5)}
    context = write_context(work / "many", "FROM base\nCOPY . /app\n", files)
    explain(sb, context, "many")
    for n in range(5):
        (context / f"f{n}.txt").write_text("2\n")
    assert explain(sb, context, "many", "-v") == [
        "5 files changed: f0.txt (content), f1.txt (content), f2.txt (content),"
        " f3.txt (content), f4.txt (content)"]


def test_arg_changed(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "arg", "FROM base\nARG VERSION\nRUN echo $VERSION > /v\n")
    explain(sb, context, "arg", "--build-arg", "VERSION=1.2")
    assert explain(sb, context, "arg", "--build-arg", "VERSION=1.3") == [
        "ARG VERSION changed 1.2 → 1.3"]


def test_env_changed_names_the_variable_not_its_value(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "env", "FROM base\nENV GREETING=hello\nRUN echo hi > /g\n")
    explain(sb, context, "env")
    (context / "Stepfile").write_text("FROM base\nENV GREETING=bonjour\nRUN echo hi > /g\n")
    assert explain(sb, context, "env") == ["ENV GREETING changed"]


def test_instruction_text_changed_word_diff(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "text", "FROM base\nRUN echo one > /t\n")
    explain(sb, context, "text")
    (context / "Stepfile").write_text("FROM base\nRUN echo two > /t\n")
    assert explain(sb, context, "text") == [
        "the instruction text changed: RUN echo [-one-] {+two+} > /t"]


def test_parent_step_changed(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "parent", "FROM base\nRUN echo a > /a\nRUN cat /a > /b\n")
    explain(sb, context, "parent")
    (context / "Stepfile").write_text("FROM base\nRUN echo b > /a\nRUN cat /a > /b\n")
    assert explain(sb, context, "parent") == [
        "the instruction text changed: RUN echo [-a-] {+b+} > /a",
        "the step before it (Stepfile:2) changed"]


def test_base_image_resolves_to_another_digest(sb: Stepbuild, work: Path) -> None:
    one = write_context(work / "base-one", "FROM base\nRUN echo one > /base-one\n")
    two = write_context(work / "base-two", "FROM base\nRUN echo two > /base-two\n")
    first = sb.build(one, "-q", "-t", "mybase", *EPOCH).stdout.split()[-1]
    context = write_context(work / "on-base", "FROM mybase\nRUN echo app > /app\n")
    explain(sb, context, "on-base")
    second = sb.build(two, "-q", "-t", "mybase", *EPOCH).stdout.split()[-1]
    assert first != second
    assert explain(sb, context, "on-base") == [
        f"base image mybase now resolves to {second}, was {first}"]


def test_stages_are_labelled_and_copy_from_names_its_source(sb: Stepbuild, work: Path) -> None:
    stepfile = ("FROM base AS deps\nRUN echo 1 > /dep\n"
                "FROM base\nCOPY --from=deps /dep /dep\n")
    context = write_context(work / "stages", stepfile)
    explain(sb, context, "stages")
    (context / "Stepfile").write_text(stepfile.replace("echo 1", "echo 2"))
    result = sb.build(context, "-t", "stages", *EPOCH, "--explain")
    assert [line for line in result.stderr.splitlines() if "why:" in line] == [
        "[deps]      why: the instruction text changed: RUN echo [-1-] {+2+} > /dep",
        "[1]      why: the --from source's content changed"]
    assert sb("why", "stages").stdout.splitlines()[1:] == [
        "[deps] Stepfile:2 RUN echo 2 > /dep — the instruction text changed: RUN echo [-1-]"
        " {+2+} > /dep",
        "[1] Stepfile:4 COPY --from=deps /dep /dep — the --from source's content changed"]


def test_why_after_the_fact(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "why", "FROM base\nRUN echo 1 > /w\nRUN cat /w > /x\n")
    sb.build(context, "-q", "-t", "whyapp", *EPOCH)
    (context / "Stepfile").write_text("FROM base\nRUN echo 1 > /w\nRUN cat  /w > /y\n")
    built = sb.build(context, "-q", "-t", "whyapp", *EPOCH).stdout.split()[-1]  # no --explain
    assert sb("why", "whyapp").stdout.splitlines() == [
        f"last build: {built} (Stepfile)",
        "Stepfile:2 RUN echo 1 > /w — CACHED",
        "Stepfile:3 RUN cat  /w > /y — the instruction text changed: RUN cat /w > [-/x-]"
        " {+/y+}"]
    assert sb("why").stdout.splitlines()[0] == f"last build: {built} (Stepfile)"
    missing = sb("why", "never-built", check=False)
    assert_clear_error(missing, 1, "no build of 'never-built' is known")


def test_rawjson_step_done_carries_reason(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "raw", "FROM base\nRUN echo 1 > /r\n")
    sb.build(context, "-q", "-t", "raw", *EPOCH)
    (context / "Stepfile").write_text("FROM base\nRUN echo 2 > /r\n")
    stderr = sb.build(context, "-t", "raw", *EPOCH, "--explain", "--progress=rawjson").stderr
    done = [e for e in map(json.loads, stderr.splitlines()) if e["kind"] == "step.done"]
    assert [e["reason"] for e in done] == [
        "the instruction text changed: RUN echo [-1-] {+2+} > /r"]
    plain = sb.build(context, "-t", "raw", *EPOCH, "--no-cache").stderr
    assert whys(plain) == []  # without --explain, no why lines


def test_secret_value_is_never_saved(sb: Stepbuild, work: Path) -> None:
    secret = work / "token"
    secret.write_text("s3cr3t-value-xyz")
    context = write_context(work / "secret", "FROM base\n"
                            "RUN --mount=type=secret,id=tok cat /run/secrets/tok > /dev/null\n")
    explain(sb, context, "secret", "--secret", f"id=tok,src={secret}")
    for directory in ("explain", "builds", "cache"):
        for path in (sb.root / directory).rglob("*.json"):
            assert b"s3cr3t-value-xyz" not in path.read_bytes(), path


def test_material_is_pruned_with_its_record(work: Path) -> None:
    sb = store_with_base(work, "prune", *EPOCH)
    of_base = set((sb.root / "explain").glob("*.json"))  # the ADD that made `base`
    context = write_context(work / "pruned", "FROM base\nRUN echo p > /p\n")
    sb.build(context, "-q", "-t", "pruned", *EPOCH)
    material = set((sb.root / "explain").glob("*.json")) - of_base
    assert len(material) == 1
    (path,) = material
    assert (sb.root / "cache" / path.name).exists()
    sb("rmi", "pruned")
    sb("prune", "-f", "--filter", "until=0s")  # records used just now go too
    assert not (sb.root / "cache" / path.name).exists()
    assert set((sb.root / "explain").glob("*.json")) == of_base  # base is still tagged


def test_team_cache_names_the_input_that_differed(work: Path) -> None:
    stepfile = ("FROM base\nRUN echo one > /one\nCOPY data.txt /data.txt\n"
                "RUN cat /one /data.txt > /both\n")
    ours = write_context(work / "team-a", stepfile, {"data.txt": "a\n"})
    theirs = write_context(work / "team-b", stepfile, {"data.txt": "b\n"})
    shared = work / "team-cache"
    colleague = store_with_base(work, "colleague", *EPOCH)
    colleague.build(ours, "-q", "-t", "app", *EPOCH, "--cache-to", f"type=local,dest={shared}")
    me = store_with_base(work, "me", *EPOCH)
    result = me.build(theirs, "-t", "app", *EPOCH, "--explain",
                      "--cache-from", f"type=local,src={shared}")
    assert whys(result.stderr) == [
        "the team cache held it under other inputs: 1 file changed: data.txt (content)",
        "the team cache held it under other inputs: the step before it (Stepfile:3) changed"]
    # What went out is paths and digests: data.txt's entry, never its content.
    exported = [json.loads(p.read_bytes()) for p in (shared / "keys").glob("*.json")]
    copied = [r["explain"] for r in exported if r["created_by"].startswith("COPY")]
    assert len(copied) == 1 and list(copied[0]["files"]) == ["data.txt"]
    assert copied[0]["files"]["data.txt"].startswith("file 0644 ")
    assert not any('"a\\n"' in p.read_text() for p in (shared / "keys").glob("*.json"))


def test_team_cache_in_a_registry(work: Path,
                                  plain_registry: registry_fixture.RunningRegistry) -> None:
    stepfile = "FROM base\nARG LEVEL\nRUN echo $LEVEL > /level\n"
    ref = f"{plain_registry.host}/explain/team:cache"
    context = write_context(work / "team-reg", stepfile)
    colleague = store_with_base(work, "reg-colleague", *EPOCH)
    colleague.build(context, "-q", "-t", "app", *EPOCH, "--build-arg", "LEVEL=3",
                    "--cache-to", f"type=registry,ref={ref}")
    me = store_with_base(work, "reg-me", *EPOCH)
    assert explain(me, context, "app", "--build-arg", "LEVEL=4", "--cache-from", ref) == [
        "the team cache held it under other inputs: ARG LEVEL changed 3 → 4"]


def test_nothing_comparable_names_the_team_cache(work: Path) -> None:
    sb = store_with_base(work, "lonely", *EPOCH)
    empty = work / "empty-cache"
    empty.mkdir()
    context = write_context(work / "lonely-ctx", "FROM base\nRUN echo lonely > /l\n")
    assert explain(sb, context, "lonely", "--cache-from", f"type=local,src={empty}") == [
        f"not in the store, nor in the team cache at type=local,dir={empty}"]
