"""progress_flags.py: which mode a command draws, the error as a rawjson event, the
Progress closed at the end (no heartbeat thread left), how a no-op rebuild replays."""

from __future__ import annotations

import argparse
import io
import json
import threading

import pytest

from stepbuild.cli import progress_flags
from stepbuild.cli.main import _argument_parser
from stepbuild.errors import PlanError, UsageError
from stepbuild.progress.rawjson import RawJsonView


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(progress_flags.ENV, raising=False)
    monkeypatch.setenv("STEPBUILD_HEARTBEAT", "0.05")


def parsed(*args: str) -> argparse.Namespace:
    return _argument_parser().parse_args(list(args))


@pytest.mark.parametrize(("args", "env", "terminal", "mode"), [
    (("build", "."), "", False, "plain"),            # auto, piped
    (("build", "."), "", True, "tty"),               # auto, on a terminal
    (("build", "-q", "."), "", True, "quiet"),
    (("build", "-q", "."), "rawjson", False, "quiet"),  # -q is more explicit than the env
    (("build", "."), "rawjson", True, "rawjson"),
    (("build", "."), "auto", True, "tty"),
    (("build", "--progress=plain", "-q", "."), "", True, "plain"),  # the flag wins
    (("build", "--progress", "tty", "."), "", False, "tty"),
    (("push", "--progress=rawjson", "app"), "", False, "rawjson"),
    (("pull", "--progress=quiet", "reg/app"), "", False, "quiet"),
])
def test_the_mode(monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], env: str,
                  terminal: bool, mode: str) -> None:
    monkeypatch.setenv(progress_flags.ENV, env)
    monkeypatch.setattr("sys.stderr", Terminal() if terminal else io.StringIO())
    assert progress_flags.mode(parsed(*args)) == mode


def test_a_bad_environment_value_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(progress_flags.ENV, "fancy")
    with pytest.raises(UsageError, match="STEPBUILD_PROGRESS"):
        progress_flags.mode(parsed("build", "."))


def test_a_bad_flag_value_is_refused_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parsed("build", "--progress=fancy", ".")
    assert exit_.value.code == 2
    assert "--progress" in capsys.readouterr().err


def heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "stepbuild-heartbeat"]


def test_in_rawjson_the_error_is_the_last_event_and_not_printed_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    options = parsed("build", "--progress=rawjson", ".")
    error = PlanError("target stage 'x' could not be found", hint="stages: none")
    with pytest.raises(PlanError) as raised, progress_flags.reporting(options):
        progress_flags.progress(options).warn("careful")
        assert len(heartbeat_threads()) == 1
        raise error
    assert progress_flags.reported(raised.value)
    lines = [json.loads(line) for line in err.getvalue().splitlines()]
    assert lines[0]["kind"] == "warning"
    assert lines[-1]["kind"] == "build.error"
    assert lines[-1]["exit_code"] == 2
    assert lines[-1]["text"] == "target stage 'x' could not be found\nhint: stages: none"
    assert heartbeat_threads() == []


def test_an_error_before_the_build_began_is_still_an_event(
        monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    options = parsed("build", "--progress=rawjson", ".")
    with pytest.raises(UsageError), progress_flags.reporting(options):
        raise UsageError("bad")
    assert [json.loads(line)["kind"] for line in err.getvalue().splitlines()] == ["build.error"]


def test_in_plain_the_cli_prints_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    options = parsed("build", "--progress=plain", ".")
    with pytest.raises(UsageError) as raised, progress_flags.reporting(options):
        progress_flags.progress(options)
        raise UsageError("bad")
    assert not progress_flags.reported(raised.value)
    assert err.getvalue() == ""
    assert heartbeat_threads() == []


def test_a_command_without_the_flag_gets_the_plain_log_and_no_heartbeat(
        monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    options = parsed("run", "-v", "base")
    with progress_flags.reporting(options):
        progress = progress_flags.progress(options)
        assert progress is progress_flags.progress(options)  # one per command
        progress.note("", "why")
        assert heartbeat_threads() == []
    assert err.getvalue() == "     why\n"


def test_the_replay_of_each_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", Terminal())
    tty = progress_flags.replay_view(parsed("build", "-v", "."))
    assert tty == {"quiet": False, "verbose": True, "emit": None}  # plain text, no rich
    assert progress_flags.replay_view(parsed("build", "-q", "."))["quiet"] is True
    assert isinstance(progress_flags.replay_view(parsed("build", "--progress=rawjson", "."))
                      ["emit"], RawJsonView)


def test_lines_printed_beside_the_progress_become_notices() -> None:
    from stepbuild.progress import make_progress

    plain, raw = io.StringIO(), io.StringIO()
    for mode, out in (("plain", plain), ("rawjson", raw)):
        progress = make_progress(mode, out)
        stream = progress_flags.notices(progress)
        print("oci out.tar sha256:1", file=stream)
        stream.write("tar ")
        stream.flush()
        stream.write("rootfs.tar -\n")
        progress.close()
    assert plain.getvalue() == "oci out.tar sha256:1\ntar rootfs.tar -\n"
    assert [(e["kind"], e["text"]) for e in map(json.loads, raw.getvalue().splitlines())] == [
        ("notice", "oci out.tar sha256:1"), ("notice", "tar rootfs.tar -")]
