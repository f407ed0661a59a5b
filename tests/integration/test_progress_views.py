"""--progress for real: the views of real builds, pushes and pulls through the CLI.

- rawjson: a multi-stage build whose last RUN fails gives nothing but JSON lines on stderr,
  each valid against the packaged schema, with step.started/step.log/step.cached/step.error
  and build.error carrying the right stages, step numbers and Stepfile lines; a no-op rebuild
  replays as events; push and pull against the real registry give `transfer` events.
- plain: a `RUN sleep` longer than the heartbeat interval ($STEPBUILD_HEARTBEAT) gets a
  heartbeat line.
- tty: `stepbuild build --progress=tty` (and auto) with stderr a pseudo-terminal renders the
  step's text, ends cleanly (exit 0, DONE and the digest line last, the cursor shown again);
  a failure leaves the failed step's last lines above the error. With stderr a pipe, auto
  writes no escape code at all.
- a no-op rebuild with --progress=tty does not import rich.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from stepbuild.progress.rawjson import schema
from tests.integration import registry_fixture
from tests.integration.builds import PROJECT, Stepbuild, store_with_base, write_context

pytestmark = pytest.mark.root

plain_registry = registry_fixture.plain_registry

FAILING = (
    "FROM base AS one\n"
    "RUN echo hello > /hello && echo made hello\n"
    "FROM base AS two\n"
    "COPY --from=one /hello /hello\n"
    "RUN echo about to fail; echo second line; exit 3\n"
)
SHOW_CURSOR, HIDE_CURSOR = "\x1b[?25h", "\x1b[?25l"
SETTLE = 2.1  # cli/noop.py's RACY_WINDOW_NS, and a little


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("progress")


@pytest.fixture(scope="module")
def sb(work: Path) -> Stepbuild:
    return store_with_base(work, "store")


def events(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line, parsed and validated against the schema (any other line fails)."""
    validator = jsonschema.Draft202012Validator(schema())
    parsed = []
    for line in stderr.splitlines():
        event = json.loads(line)
        validator.validate(event)
        parsed.append(event)
    return parsed


def test_rawjson_of_a_failing_multi_stage_build(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "failing", FAILING)
    first = sb.build(context, "--progress=rawjson", check=False)
    assert first.returncode == 1
    assert [(e["stage"], e["step"]) for e in events(first.stderr)
            if e["kind"] == "step.done"] == [("one", 2), ("two", 4)]
    second = sb.build(context, "--progress=rawjson", check=False)  # one's steps now cached
    assert second.returncode == 1 and second.stdout == ""
    stream = events(second.stderr)
    started = {e["step"]: (e.get("stage"), e["text"], e.get("line"))
               for e in stream if e["kind"] == "step.started"}
    assert started == {1: ("one", "FROM base AS one", 1),
                       2: ("one", "RUN echo hello > /hello && echo made hello", 2),
                       3: ("two", "FROM base AS two", 3),
                       4: ("two", "COPY --from=one /hello /hello", 4),
                       5: ("two", "RUN echo about to fail; echo second line; exit 3", 5)}
    kinds = [e["kind"] for e in stream]
    assert kinds[0] == "build.started" and kinds[-1] == "build.error"
    assert [(e.get("stage"), e["step"]) for e in stream if e["kind"] == "step.cached"] == [
        ("one", 2), ("two", 4)]
    assert [(e["step"], e["text"]) for e in stream if e["kind"] == "step.log"] == [
        (5, "about to fail"), (5, "second line")]
    [error] = [e for e in stream if e["kind"] == "step.error"]
    assert (error["stage"], error["step"]) == ("two", 5)
    assert "exit" in error["text"] and "3" in error["text"]
    assert stream[-1]["exit_code"] == 1 and stream[-1]["text"] == error["text"]
    assert kinds.index("step.error") > max(i for i, k in enumerate(kinds) if k == "step.log")
    times = [e["time"] for e in stream]
    assert times == sorted(times)  # one stage at a time here: in order


def test_rawjson_of_a_build(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "fine", "FROM base\nRUN echo fine > /fine\n")
    archive = work / "fine.tar"
    built = sb.build(context, "--progress=rawjson", "-t", "fine", "--no-cache",
                     "-o", f"type=oci,dest={archive}")
    stream = events(built.stderr)
    assert [(e["kind"], e.get("step")) for e in stream] == [
        ("build.started", None), ("step.started", 1), ("step.started", 2), ("step.done", 2),
        ("notice", None), ("build.done", None)]
    assert stream[-2]["text"].startswith(f"oci {archive} sha256:")  # the --output's line
    done = stream[-1]
    assert done["text"] == built.stdout.strip()
    assert (done["steps"], done["cached"], done["tags"]) == (2, 0, ["fine"])


def test_plain_heartbeat_for_a_silent_run(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "sleepy", "FROM base\nRUN sleep 1.5\n")
    result = sb("build", "--progress=plain", "--no-cache", str(context),
                env={"STEPBUILD_HEARTBEAT": "0.3"})
    lines = result.stderr.splitlines()
    beats = [line for line in lines if re.fullmatch(r" {5}#2 still running: \d+s", line)]
    assert beats, result.stderr
    assert lines.index(beats[0]) > lines.index("#2   RUN sleep 1.5")
    assert lines.index(beats[-1]) < next(i for i, x in enumerate(lines) if "DONE" in x)


def test_auto_to_a_pipe_writes_no_escape_code(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "piped", "FROM base\nRUN echo piped\n")
    result = sb("build", "--progress=auto", "--no-cache", str(context),
                env={"TERM": "xterm-256color", "FORCE_COLOR": ""})
    assert "\x1b" not in result.stderr
    assert "  | piped" in result.stderr.splitlines()  # the plain log


def on_a_terminal(sb: Stepbuild, *args: str) -> tuple[int, str, str]:
    """Run the CLI with stderr a pseudo-terminal (stdout a pipe, as `d=$(stepbuild ...)`);
    return its status, what it drew on the terminal, and its stdout."""
    master, slave = pty.openpty()
    env = {**os.environ, "STEPBUILD_ROOT": str(sb.root), "PYTHONPATH": str(PROJECT),
           "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen([sys.executable, "-m", "stepbuild", *args], env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=slave)
    os.close(slave)
    drawn = bytearray()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer of the terminal is gone
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    assert process.stdout is not None
    stdout = process.stdout.read().decode()
    process.stdout.close()
    return process.wait(timeout=60), drawn.decode("utf-8", "replace"), stdout


def screen_lines(drawn: str) -> list[str]:
    """The lines a terminal shows after `drawn` (with its scrollback): a small emulator of
    what rich writes — text, CR, LF, cursor up (CSI n A), erase line (CSI 2K); other escape
    sequences (colours, the cursor's visibility) change no text."""
    screen: list[list[str]] = [[]]
    row = column = 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]+", drawn):
        if token == "\r":
            column = 0
        elif token == "\n":
            row += 1
            screen.extend([] for _ in range(row + 1 - len(screen)))
        elif token.startswith("\x1b["):
            if token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
            elif token == "\x1b[2K":
                screen[row] = []
        else:
            line = screen[row]
            line.extend(" " for _ in range(column - len(line)))
            line[column:column + len(token)] = token
            column += len(token)
    return ["".join(line).rstrip() for line in screen]


@pytest.mark.parametrize("mode", ["tty", "auto"])
def test_the_tty_view_renders_and_ends_cleanly(sb: Stepbuild, work: Path, mode: str) -> None:
    context = write_context(work / f"live-{mode}", (
        "FROM base\n"
        f"RUN for i in 1 2 3 4 5 6 7 8; do echo {mode} line $i; sleep 0.1; done\n"))
    status, drawn, stdout = on_a_terminal(sb, "build", f"--progress={mode}", "--no-cache",
                                          str(context))
    assert status == 0, drawn
    digest = stdout.strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    assert HIDE_CURSOR in drawn and drawn.rindex(SHOW_CURSOR) > drawn.rindex(HIDE_CURSOR)
    frames = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)  # everything ever drawn
    assert f"  | {mode} line 1" in frames  # the running step's last lines...
    assert re.search(r"done  \d+\.\ds\r?\n", frames)  # ...under it, with its timer
    shown = [line for line in screen_lines(drawn) if line]  # what stays on the terminal
    assert shown[:2] == ["isolation: namespaces", "#1 FROM base"]
    assert re.fullmatch(rf"#2 RUN for i in .* {mode} line .*  DONE \d+\.\ds", shown[2])
    assert shown[3:] == [f"built {digest} (2 steps, 0 cached)"]


def test_the_tty_view_of_a_build_push(sb: Stepbuild, work: Path,
                                      plain_registry: registry_fixture.RunningRegistry) -> None:
    context = write_context(work / "live-push", "FROM base\nRUN echo pushed > /live\n")
    ref = f"{plain_registry.host}/progress/live:1"
    status, drawn, stdout = on_a_terminal(sb, "build", "--progress=tty", "--push", "-t", ref,
                                          "--tls-verify=false", str(context))
    assert status == 0, drawn
    shown = [line for line in screen_lines(drawn) if line]
    assert any(re.fullmatch(r"[0-9a-f]{12}: (pushed|exists).*", line) for line in shown)
    pushed = next(line for line in shown if line.startswith(f"pushed {ref}"))
    assert shown.index(pushed) < len(shown) - 1
    assert shown[-1].startswith("built sha256:")
    assert drawn.rindex(SHOW_CURSOR) > drawn.rindex(HIDE_CURSOR)
    inspected = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                                f"docker://{ref}"], capture_output=True, check=True)
    assert stdout.strip() == "sha256:" + hashlib.sha256(inspected.stdout).hexdigest()


def test_the_tty_view_keeps_the_failed_steps_lines_above_the_error(
        sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "live-failing", FAILING)
    status, drawn, stdout = on_a_terminal(sb, "build", "--progress=tty", str(context))
    assert status == 1 and stdout == ""
    shown = [line for line in screen_lines(drawn) if line]
    failed = shown.index("[two] #5 RUN echo about to fail; echo second line; exit 3  ERROR")
    assert shown[failed + 1:failed + 3] == ["  | about to fail", "  | second line"]
    assert shown[failed + 3].startswith("stepbuild: error: ")
    assert drawn.rindex(SHOW_CURSOR) > drawn.rindex(HIDE_CURSOR)
    assert "Traceback" not in drawn


def test_no_op_rebuilds_replay_as_events_and_without_rich(sb: Stepbuild, work: Path) -> None:
    context = write_context(work / "noop", "FROM base\nRUN echo once > /once\n")
    time.sleep(SETTLE)  # files younger than that make a build "racy": not recorded
    first = sb.build(context, "-t", "noop")
    replayed = sb.build(context, "--progress=rawjson", "-t", "noop")
    assert replayed.stdout == first.stdout
    stream = events(replayed.stderr)
    assert [(e["kind"], e.get("step")) for e in stream] == [
        ("build.started", None), ("step.started", 1), ("step.started", 2), ("step.cached", 2),
        ("build.done", None)]
    assert not [e for e in stream if "line" in e]  # replayed: the transcript has no lines
    assert stream[-1]["text"] == first.stdout.strip()
    # -X importtime, not $PYTHONPROFILEIMPORTTIME: the environment is in the fingerprint
    again = subprocess.run([sys.executable, "-X", "importtime", "-m", "stepbuild", "build",
                            "--progress=tty", "-t", "noop", str(context)],
                           env={**os.environ, "STEPBUILD_ROOT": str(sb.root),
                                "PYTHONPATH": str(PROJECT)},
                           capture_output=True, text=True, check=True)
    imported = [line.rsplit("|", 1)[-1].strip() for line in again.stderr.splitlines()
                if line.startswith("import time:")]
    assert "stepbuild.cli.noop" in imported  # the measurement works
    assert "stepbuild.build.builder" not in imported  # a replay
    assert not [name for name in imported if name == "rich" or name.startswith("rich.")]
    assert again.stdout == first.stdout


def test_push_and_pull_in_rawjson_are_transfer_events(
        sb: Stepbuild, work: Path, plain_registry: registry_fixture.RunningRegistry) -> None:
    context = write_context(work / "pushed", "FROM base\nRUN echo pushed > /pushed\n")
    sb.build(context, "-q", "-t", "pushed")
    ref = f"{plain_registry.host}/progress/pushed:1"
    push = sb("push", "--progress=rawjson", "--tls-verify=false", "pushed", ref)
    pushed = events(push.stderr)
    transfers = [e for e in pushed if e["kind"] == "transfer"]
    assert {e["key"] for e in transfers if e["text"].startswith("compressing")}
    assert any(e["text"].startswith("pushed") for e in transfers)
    assert pushed[-1] == {**pushed[-1], "kind": "notice"}
    assert pushed[-1]["text"].startswith(f"pushed {ref}")
    fresh = Stepbuild(work / "pulled-store")
    pull = fresh("pull", "--progress=rawjson", "--tls-verify=false", ref)
    pulled = events(pull.stderr)
    states = [e["text"] for e in pulled if e["kind"] == "transfer" and "current" not in e]
    assert any(s.startswith("downloading") for s in states) and "pulled" in states
    assert pull.stdout == push.stdout  # the registry's digest, both ways


def test_rawjson_of_a_build_push_names_the_registrys_digest(
        sb: Stepbuild, work: Path, plain_registry: registry_fixture.RunningRegistry) -> None:
    """image.pushed carries what a pipeline deploys: the registry's digest, which skopeo
    serves, while build.done keeps the store's own."""
    context = write_context(work / "pushed-build", "FROM base\nRUN echo p > /p\n")
    ref = f"{plain_registry.host}/progress/built:1"
    built = sb.build(context, "--progress=rawjson", "--push", "--tls-verify=false", "-t", ref)
    stream = events(built.stderr)
    pushes = [e for e in stream if e["kind"] == "image.pushed"]
    assert [(e["ref"], e["text"]) for e in pushes] == [(ref, built.stdout.strip())]
    assert stream[-1]["kind"] == "build.done"
    assert stream.index(pushes[0]) < len(stream) - 1
    served = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    assert json.loads(served)["Digest"] == pushes[0]["text"]


def test_rawjson_with_the_archive_on_stdout_stays_all_json(sb: Stepbuild, work: Path) -> None:
    """-o - puts the archive on stdout; stderr stays a pure event stream (the digest is in
    build.done, not a plain line)."""
    context = write_context(work / "streamed", "FROM base\nRUN echo s > /s\n")
    built = subprocess.run([sys.executable, "-m", "stepbuild", "build", "--progress=rawjson",
                            "-o", "-", str(context)], capture_output=True, timeout=300,
                           env={**os.environ, "STEPBUILD_ROOT": str(sb.root),
                                "PYTHONPATH": str(PROJECT)}, check=False)
    assert built.returncode == 0, built.stderr
    stream = events(built.stderr.decode())
    assert stream[-1]["kind"] == "build.done"
    assert stream[-1]["text"].startswith("sha256:")
    assert built.stdout[257:262] == b"ustar"  # stdout is the tar
