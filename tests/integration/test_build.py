"""Real builds, as root: RUN in the sandbox, layers from overlay upper dirs, the step cache.

Each test has its own store (tmp_path) with the busybox `base` image, and drives the real CLI.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from pathlib import Path

import pytest

from tests.integration.builds import (
    Stepbuild,
    assert_clear_error,
    base_image,
    step_lines,
    write_context,
)


@pytest.fixture()
def sb(tmp_path: Path) -> Stepbuild:
    stepbuild = Stepbuild(tmp_path / "store")
    base_image(stepbuild, tmp_path)
    return stepbuild


def manifest_and_config(sb: Stepbuild, image: str) -> tuple[dict, dict]:
    document = json.loads(sb("inspect", image).stdout)
    return document["manifest"], document["config"]


def layer_members(sb: Stepbuild, image: str, index: int = -1) -> dict[str, tarfile.TarInfo]:
    manifest, _ = manifest_and_config(sb, image)
    digest = manifest["layers"][index]["digest"].removeprefix("sha256:")
    with tarfile.open(sb.root / "blobs" / "sha256" / digest) as tar:
        return {member.name: member for member in tar.getmembers()}


def assert_consistent(sb: Stepbuild) -> None:
    result = sb("check", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_then_run_sees_what_run_wrote(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", "FROM base\nRUN echo made-by-run > /made\n"
                            'CMD ["cat", "/made"]\n')
    sb.build(context, "-t", "app:1.0")
    assert sb.run("app:1.0") == "made-by-run\n"
    assert sb.run("app:1.0", "sh", "-c", "echo $PATH") == "/bin:/usr/bin:/sbin:/usr/sbin\n"
    assert_consistent(sb)


def test_removed_files_and_recreated_dirs_give_whiteouts_and_opaque_dirs(
        sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\n"
        "RUN mkdir -p /d/sub && echo a > /d/a && echo b > /d/sub/b && echo f > /f\n"
        "RUN rm /f && rm -rf /d && mkdir /d && echo new > /d/c\n"))
    sb.build(context, "-t", "wh")
    members = layer_members(sb, "wh")
    assert ".wh.f" in members and members[".wh.f"].size == 0
    assert "d/.wh..wh..opq" in members
    assert "d/c" in members
    assert not any(name.startswith("d/sub") or name == "d/a" for name in members)
    assert sb.run("wh", "sh", "-c", "ls -A /d; test -e /f || echo no-f") == "c\nno-f\n"


def test_unchanged_copied_up_dirs_are_left_out_of_the_layer(sb: Stepbuild, tmp_path: Path
                                                            ) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\nRUN mkdir -p /a/b/c && touch -d 2020-01-01 /a /a/b /a/b/c\n"
        "RUN touch -d 2020-01-01 /a/b/c/new\n"))  # c changes (a new entry), a and a/b do not
    sb.build(context, "-t", "cu")
    members = layer_members(sb, "cu")
    assert "a/b/c/new" in members and "a/b/c" in members
    assert "a" not in members and "a/b" not in members  # copied up, unchanged


def test_unchanged_rebuild_is_all_cached_with_the_same_digest(sb: Stepbuild, tmp_path: Path
                                                             ) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\nCOPY a.txt /a.txt\nRUN echo run > /r\nENV X=1\nCOPY b.txt /b.txt\n"),
        {"a.txt": "a\n", "b.txt": "b\n"})
    first = sb.build(context, "-t", "img")
    second = sb.build(context, "-t", "img")
    assert step_lines(first.stderr) == ["DONE", "DONE", "DONE"]
    assert step_lines(second.stderr) == ["CACHED", "CACHED", "CACHED"]
    assert first.stdout == second.stdout


def test_context_edits_touch_and_chmod(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\nRUN echo before > /before\nCOPY a.txt /a.txt\nRUN echo after > /after\n"
        "COPY b.txt /b.txt\n"), {"a.txt": "a\n", "b.txt": "b\n"})
    sb.build(context, "-t", "img")
    (context / "a.txt").write_text("edited\n")
    assert step_lines(sb.build(context).stderr) == ["CACHED", "DONE", "DONE", "DONE"]
    (context / "a.txt").touch()
    assert step_lines(sb.build(context).stderr) == ["CACHED"] * 4
    (context / "a.txt").chmod(0o600)
    assert step_lines(sb.build(context).stderr) == ["CACHED", "DONE", "DONE", "DONE"]
    assert sb.run("img", "cat", "/a.txt") == "a\n"  # the tag still names the first build


def test_a_rerun_with_an_identical_layer_lets_later_steps_hit(sb: Stepbuild, tmp_path: Path
                                                             ) -> None:
    # The ARG changes the RUN's key (it is in its environment), but the RUN writes the same
    # file with a fixed mtime: same layer, same parent state for the COPY after it.
    context = write_context(tmp_path / "ctx", (
        "FROM base\nARG V\nRUN echo fixed > /x && touch -d '2020-01-01 00:00:00' /x\n"
        "COPY c.txt /c\n"),
        {"c.txt": "c\n"})
    sb.build(context, "--build-arg", "V=1")
    second = sb.build(context, "--build-arg", "V=2")
    assert step_lines(second.stderr) == ["DONE", "CACHED"]


def test_no_cache_runs_everything(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", "FROM base\nRUN echo 1 > /one\n")
    sb.build(context)
    assert step_lines(sb.build(context, "--no-cache").stderr) == ["DONE"]


def test_a_step_that_changes_nothing_adds_no_layer(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", "FROM base\nRUN true\n")
    sb.build(context, "-t", "same")
    manifest, config = manifest_and_config(sb, "same")
    base_manifest, _ = manifest_and_config(sb, "base")
    assert len(manifest["layers"]) == len(base_manifest["layers"])
    assert config["history"][-1]["empty_layer"] is True


def test_a_layer_repeated_in_one_image_builds_runs_and_serves_as_a_base(sb: Stepbuild,
                                                                        tmp_path: Path) -> None:
    # Three identical COPY steps make one diff_id three times (OCI allows it); overlayfs refuses
    # a lowerdir twice, so the stack keeps each layer at its topmost place (issue 11, item 1).
    context = write_context(tmp_path / "ctx", (
        "FROM base\nCOPY foo /foo\nCOPY foo /foo\nCOPY foo /foo\nRUN cat /foo > /out\n"),
        {"foo": "same bytes\n"})
    sb.build(context, "-t", "repeated")
    manifest, config = manifest_and_config(sb, "repeated")
    diff_ids = config["rootfs"]["diff_ids"]
    assert diff_ids[-4] == diff_ids[-3] == diff_ids[-2]  # the one layer, three times
    assert sb.run("repeated", "cat", "/out") == "same bytes\n"
    child = write_context(tmp_path / "child", (
        "FROM repeated\nCOPY --from=repeated /foo /copied\nRUN cat /foo /copied > /out\n"))
    sb.build(child, "-t", "child")
    assert sb.run("child", "cat", "/out") == "same bytes\nsame bytes\n"


def test_config_and_history_are_recorded(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\nENV A=1 B=\"two words\"\nARG V=x\nLABEL team=core version=$V\n"
        "WORKDIR /srv\nWORKDIR app\nUSER 1000:1000\nEXPOSE 80 53/udp\nVOLUME /data\n"
        'SHELL ["/bin/sh", "-ec"]\nSTOPSIGNAL SIGINT\n'
        "HEALTHCHECK --interval=30s --retries=2 CMD wget -q -O- localhost\n"
        "ONBUILD RUN echo child\nENTRYPOINT [\"/bin/sh\"]\nCMD [\"-c\", \"id\"]\n"))
    sb.build(context, "-t", "cfg")
    _, config = manifest_and_config(sb, "cfg")
    run_config = config["config"]
    assert run_config["Env"][-2:] == ["A=1", "B=two words"]
    assert run_config["Labels"] == {"team": "core", "version": "x"}
    assert run_config["WorkingDir"] == "/srv/app"
    assert run_config["User"] == "1000:1000"
    assert run_config["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert run_config["Volumes"] == {"/data": {}}
    assert run_config["Shell"] == ["/bin/sh", "-ec"]
    assert run_config["StopSignal"] == "SIGINT"
    assert run_config["Healthcheck"] == {"Test": ["CMD-SHELL", "wget -q -O- localhost"],
                                         "Interval": 30_000_000_000, "Retries": 2}
    assert run_config["OnBuild"] == ["RUN echo child"]
    assert run_config["Entrypoint"] == ["/bin/sh"] and run_config["Cmd"] == ["-c", "id"]
    created_by = [entry["created_by"] for entry in config["history"]]
    assert created_by[-3:] == ["ONBUILD RUN echo child", 'ENTRYPOINT ["/bin/sh"]',
                               'CMD ["-c" "id"]']
    # WORKDIR makes its directory (BuildKit): /srv and /srv/app are layers, the rest config
    entries = {entry["created_by"]: entry.get("empty_layer", False)
               for entry in config["history"][-14:]}
    assert entries.pop("WORKDIR /srv") is False and entries.pop("WORKDIR /srv/app") is False
    assert all(entries.values()) and len(entries) == 12
    assert sb.run("cfg").startswith("uid=1000 gid=1000")


def test_workdir_makes_its_directory_at_once_owned_by_the_user(sb: Stepbuild,
                                                               tmp_path: Path) -> None:
    """BuildKit's WORKDIR: `mkdir -p` now, 0755, owned by the USER in effect (a name looked
    up in the image, a lone uid as the gid too); an existing directory is left as it is and
    adds no layer. No RUN comes after: nothing else makes the directories."""
    context = write_context(tmp_path / "ctx", (
        "FROM base\nUSER nobody\nWORKDIR /data/sub\nUSER 1000\nARG D=rel\nWORKDIR $D\n"
        "USER root\nWORKDIR /etc\n"))
    first = sb.build(context, "-t", "wd")
    listing = sb.run("wd", "stat", "-c", "%n %u:%g %a", "/data", "/data/sub", "/data/sub/rel",
                     "/etc")
    assert listing.splitlines() == ["/data 65534:65534 755", "/data/sub 65534:65534 755",
                                    "/data/sub/rel 1000:1000 755", "/etc 0:0 755"]
    manifest, config = manifest_and_config(sb, "wd")
    _, base = manifest_and_config(sb, "base")
    assert len(manifest["layers"]) == len(base["rootfs"]["diff_ids"]) + 2
    assert [(h["created_by"], h.get("empty_layer", False))
            for h in config["history"][-7:]] == [
        ("USER nobody", True), ("WORKDIR /data/sub", False), ("USER 1000", True),
        ("ARG D=rel", True), ("WORKDIR /data/sub/rel", False), ("USER root", True),
        ("WORKDIR /etc", True)]  # /etc was there
    again = sb.build(context, "-t", "wd")
    assert step_lines(again.stderr) == ["CACHED"] * 3  # the three WORKDIR steps hit
    assert again.stdout == first.stdout  # the same image digest
    assert_consistent(sb)


def test_workdir_as_a_user_the_image_lacks_is_root_owned_as_in_buildkit(
        sb: Stepbuild, tmp_path: Path) -> None:
    """`USER app` + `WORKDIR` on a base without `app` builds with docker (BuildKit's readUser
    leaves the id at 0), so it builds here too; RUN as that user would still fail."""
    context = write_context(tmp_path / "ctx", "FROM base\nUSER ghost\nWORKDIR /app\nUSER 0\n")
    sb.build(context, "-t", "ghostwd")
    assert sb.run("ghostwd", "stat", "-c", "%u:%g %a", "/app") == "0:0 755\n"


def test_workdir_errors_are_located(sb: Stepbuild, tmp_path: Path) -> None:
    for stepfile, words in (
            ("FROM base\nWORKDIR /etc/passwd/x\n", ("Stepfile:2:1: WORKDIR /etc/passwd/x",
                                                     "not a directory")),
            ("FROM base\nUSER 0:4294967295\nWORKDIR /app\n", (
                "Stepfile:3:1: WORKDIR as USER 0:4294967295", "out of range"))):
        result = sb.build(write_context(tmp_path / "bad", stepfile), check=False)
        assert_clear_error(result, 1, *words)
    assert_consistent(sb)
    assert os.listdir(sb.root / "tmp") == []


def test_from_an_earlier_stage_and_from_a_tag(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base AS first\nRUN echo one > /one\nFROM first\nRUN cat /one > /two\n"))
    sb.build(context, "-t", "staged")
    assert sb.run("staged", "cat", "/two") == "one\n"
    child = write_context(tmp_path / "child", "FROM staged\nRUN cat /two /one\n")
    assert sb.build(child).returncode == 0


def test_a_failing_run_reports_where_what_and_the_last_output(sb: Stepbuild, tmp_path: Path
                                                              ) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\nRUN echo ok > /ok\n"
        "RUN for i in $(seq 1 30); do echo line $i; done; exit 3\n"))
    records_before = sorted((sb.root / "cache").glob("*.json"))
    result = sb.build(context, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error = result.stderr[result.stderr.index("stepbuild: error:"):]
    assert re.search(r"Stepfile:3: step failed with exit code 3", error)
    assert "line 30" in error and "line 11" in error and "line 10\n" not in error
    records_after = sorted((sb.root / "cache").glob("*.json"))
    assert len(records_after) == len(records_before) + 1  # the first RUN only
    assert_consistent(sb)
    assert list((sb.root / "tmp").iterdir()) == []


@pytest.mark.parametrize(("stepfile", "message"), [
    ("FROM nosuchimage:1\n", "base image 'nosuchimage:1' not found in the local store"),
    ("FROM base\nCOPY missing.txt /x\n", "missing.txt"),
    ("FROM base\nUSER ghost\nRUN true\n", "unable to find user ghost"),
])
def test_bad_input_is_one_clear_error(sb: Stepbuild, tmp_path: Path, stepfile: str,
                                      message: str) -> None:
    result = sb.build(write_context(tmp_path / "ctx", stepfile), check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_no_mount_is_left_behind(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", "FROM base\nRUN echo x > /x\nRUN false\n")
    sb.build(context, check=False)
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(sb.root) not in mounts


def test_run_is_contained(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\n"
        "RUN mknod /blk b 8 0; head -c1 /blk >/dev/null 2>&1 && echo READ-DEVICE || echo nodev\n"
        "RUN echo x > /proc/sys/kernel/hostname 2>/dev/null && echo WROTE || echo ro\n"
        "RUN ls /proc/self/fd | wc -l > /fds\n"))
    result = sb.build(context, "-t", "jail")
    assert "| READ-DEVICE" not in result.stderr and "| nodev" in result.stderr
    assert "| WROTE" not in result.stderr and "| ro" in result.stderr
    assert sb.run("jail", "cat", "/fds").strip() == "4"  # 0, 1, 2 and ls's own dir fd


def test_two_builds_at_once_on_one_store(sb: Stepbuild, tmp_path: Path) -> None:
    import subprocess
    import sys

    contexts = [write_context(tmp_path / f"ctx{i}", (
        f"FROM base\nRUN echo {i} > /n && sleep 0.2\nCOPY f /f\nRUN echo shared > /s\n"),
        {"f": f"{i}\n"}) for i in range(2)]
    env = {"STEPBUILD_ROOT": str(sb.root), "PYTHONPATH": str(Path(__file__).parents[2]),
           "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-m", "stepbuild", "build", "-q", "-t",
                               f"par{i}", str(c)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i, c in enumerate(contexts)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert sb.run("par0", "cat", "/n") == "0\n" and sb.run("par1", "cat", "/n") == "1\n"
    assert_consistent(sb)


def test_two_hundred_layers_mount(sb: Stepbuild, tmp_path: Path) -> None:
    files = {f"f{i}": f"{i}\n" for i in range(200)}
    steps = "".join(f"COPY f{i} /layers/f{i}\n" for i in range(200))
    context = write_context(tmp_path / "ctx", "FROM base\n" + steps + "RUN ls /layers | wc -l\n",
                            files)
    sb.build(context, "-t", "deep")
    manifest, _ = manifest_and_config(sb, "deep")
    assert len(manifest["layers"]) >= 201
    assert sb.run("deep", "sh", "-c", "ls /layers | wc -l; cat /layers/f0 /layers/f199") == (
        "200\n0\n199\n")


def test_kill_9_at_random_moments_never_breaks_the_store(sb: Stepbuild, tmp_path: Path) -> None:
    import random
    import signal
    import subprocess
    import sys
    import time

    files = {f"f{i}": f"{i}\n" * 1000 for i in range(5)}
    steps = "".join(f"COPY f{i} /f{i}\nRUN cat /f{i} > /r{i} && sleep 0.0{i}\n"
                    for i in range(5))
    context = write_context(tmp_path / "ctx", "FROM base\nRUN sleep 0.1 && echo marker-k9\n"
                            + steps + "RUN sleep 30.4731\n", files)
    env = {"STEPBUILD_ROOT": str(sb.root), "PYTHONPATH": str(Path(__file__).parents[2]),
           "PATH": "/usr/bin:/bin"}
    chance = random.Random(9)
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-m", "stepbuild", "build", "-q",
                                 str(context)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(chance.uniform(0.0, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert str(sb.root) not in Path("/proc/self/mountinfo").read_text()
        assert_consistent(sb)
    # The sandboxed sleep dies with its builder (PR_SET_PDEATHSIG, then its PID namespace
    # going), asynchronously: on a loaded machine that takes more than a moment. Wait for it
    # (up to 10 s: the sleep itself would run 30).
    for _ in range(100):
        leftover = subprocess.run(["pgrep", "-f", "sleep 30.4731"], capture_output=True,
                                  text=True)
        if not leftover.stdout.strip():
            break
        time.sleep(0.1)
    assert leftover.stdout.strip() == ""
    finished = write_context(tmp_path / "ctx", "FROM base\nRUN sleep 0.1 && echo marker-k9\n"
                             + steps, files)
    assert sb.build(finished).returncode == 0


def test_rmi_then_prune_frees_what_no_tag_reaches(sb: Stepbuild, tmp_path: Path) -> None:
    keep = write_context(tmp_path / "keep", "FROM base\nRUN echo keep > /k\n")
    drop = write_context(tmp_path / "drop", "FROM base\nRUN echo drop > /d\n")
    sb.build(keep, "-t", "keep")
    sb.build(drop, "-t", "drop")
    layers_before = set((sb.root / "layers").iterdir())
    sb("rmi", "drop")
    output = sb("prune", "-f", "--filter", "until=0s").stdout  # no record is in use
    assert output.startswith("removed 1 layers")
    assert len(set((sb.root / "layers").iterdir())) == len(layers_before) - 1
    assert_consistent(sb)
    assert sb.run("keep", "cat", "/k") == "keep\n"
    assert step_lines(sb.build(keep).stderr) == ["CACHED"]  # its cache records survive
    assert step_lines(sb.build(drop).stderr) == ["DONE"]
