"""`stepbuild completion bash|zsh|fish`: each shell loads the script the CLI prints and
completes with it.

bash: the script is sourced, COMP_WORDS/COMP_CWORD set as bash sets them, `_stepbuild`
called, COMPREPLY read. zsh: an interactive zsh in a pty completes a typed line with TAB
(zsh_complete.zsh). fish: `complete -C`. The scripts are made from the argparse parser: a
parser with a command of its own completes that command too. Image names (`stepbuild images`)
need a store with images: tests/integration/test_cache_flags.py checks them.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stepbuild.cli import completion
from stepbuild.cli.main import _argument_parser

PROJECT = Path(__file__).resolve().parents[3]
ZSH_COMPLETE = Path(__file__).with_name("zsh_complete.zsh")


def shell(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} missing: apt-get install {name} (scripts/setup.sh installs it)")
    return path


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The script of each shell, as `stepbuild completion SHELL` prints it."""
    directory = tmp_path_factory.mktemp("completion")
    paths = {}
    for name in completion.SHELLS:
        done = subprocess.run([sys.executable, "-m", "stepbuild", "completion", name],
                              capture_output=True, text=True, check=True,
                              env={"PYTHONPATH": str(PROJECT), "PATH": "/usr/bin:/bin"})
        assert done.stderr == ""
        paths[name] = directory / f"stepbuild.{name}"
        paths[name].write_text(done.stdout)
    return paths


def bash_complete(script: Path, *words: str, cwd: Path | None = None) -> list[str]:
    """COMPREPLY for the command line `words` (the cursor at the end of the last word)."""
    line = " ".join(words)
    probe = (f"source {shlex.quote(str(script))}\n"
             f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
             f"COMP_CWORD={len(words) - 1}\nCOMP_LINE={shlex.quote(line)}\n"
             "COMP_POINT=${#COMP_LINE}\n_stepbuild\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    done = subprocess.run([shell("bash"), "--norc", "--noprofile", "-c", probe], cwd=cwd,
                          capture_output=True, text=True, check=True, timeout=30)
    return [line for line in done.stdout.splitlines() if line]


def command_names() -> list[str]:
    [commands] = [a for a in _argument_parser()._actions
                  if isinstance(a, argparse._SubParsersAction)]
    return list(commands.choices)


# --- bash ---------------------------------------------------------------------------------------


def test_bash_registers_the_function(scripts: dict[str, Path]) -> None:
    done = subprocess.run([shell("bash"), "--norc", "-c",
                           f"source {scripts['bash']}; complete -p stepbuild"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "complete -F _stepbuild stepbuild"


def test_bash_completes_every_command_and_the_flags_of_build(scripts: dict[str, Path]) -> None:
    assert bash_complete(scripts["bash"], "stepbuild", "") == command_names()
    assert "build" in command_names() and "completion" in command_names()
    assert bash_complete(scripts["bash"], "stepbuild", "bu") == ["build"]
    assert bash_complete(scripts["bash"], "stepbuild", "build", "--no-c") == [
        "--no-cache", "--no-cache-filter"]
    assert bash_complete(scripts["bash"], "stepbuild", "--ver") == ["--version"]
    # after a global option's value, the command
    assert bash_complete(scripts["bash"], "stepbuild", "--root", "/tmp", "bu") == ["build"]


def test_bash_completes_choices_after_a_space_or_an_equals_sign(
        scripts: dict[str, Path]) -> None:
    script = scripts["bash"]
    assert bash_complete(script, "stepbuild", "build", "--network", "") == [
        "default", "none", "host"]
    # bash splits `--network=n` at '=' (COMP_WORDBREAKS): three words
    assert bash_complete(script, "stepbuild", "build", "--network", "=", "n") == ["none"]
    assert bash_complete(script, "stepbuild", "build", "--network", "=") == [
        "default", "none", "host"]
    assert bash_complete(script, "stepbuild", "build", "--pull", "") == [
        "missing", "always", "never"]
    assert bash_complete(script, "stepbuild", "push", "--tls-verify", "") == ["true", "false"]
    assert bash_complete(script, "stepbuild", "completion", "") == ["bash", "zsh", "fish"]


def test_bash_completes_paths_where_paths_go(scripts: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "Containerfile").write_text("FROM scratch\n")
    (tmp_path / "context").mkdir()
    script = scripts["bash"]
    assert bash_complete(script, "stepbuild", "build", "-f", "Cont", cwd=tmp_path) == [
        "Containerfile"]
    # the context is a directory; a value-taking flag's value is skipped over to find it
    assert bash_complete(script, "stepbuild", "build", "-t", "app:1", "", cwd=tmp_path) == [
        "context"]
    # after run's IMAGE, the words are its command: files, not images or flags
    (tmp_path / "cat.txt").write_text("")
    assert bash_complete(script, "stepbuild", "run", "app", "ca", cwd=tmp_path) == ["cat.txt"]
    assert bash_complete(script, "stepbuild", "run", "app", "ls", "--ro", cwd=tmp_path) == []


def test_the_script_is_made_from_the_parser(tmp_path: Path) -> None:
    """A command and flags of the parser's own complete without any script edited."""
    parser = argparse.ArgumentParser(prog="stepbuild")
    commands = parser.add_subparsers()
    frob = commands.add_parser("frob", help="frobnicate")
    frob.add_argument("--level", choices=("low", "high"))
    frob.add_argument("--config", dest="file")
    frob.add_argument("context")
    completion.add_command(parser, commands)
    script = tmp_path / "frob.bash"
    script.write_text(completion.script(parser, "bash"))
    assert bash_complete(script, "stepbuild", "") == ["frob", "completion"]
    assert bash_complete(script, "stepbuild", "frob", "--level", "h") == ["high"]
    assert bash_complete(script, "stepbuild", "frob", "--") == ["--help", "--level",
                                                               "--config"]


# --- zsh ----------------------------------------------------------------------------------------


def zsh_complete(script: Path, line: str, cwd: Path | None = None) -> list[str]:
    done = subprocess.run([shell("zsh"), "-f", str(ZSH_COMPLETE), str(script), line],
                          cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split()


def test_zsh_parses_the_script(scripts: dict[str, Path]) -> None:
    done = subprocess.run([shell("zsh"), "-n", str(scripts["zsh"])], capture_output=True,
                          text=True, check=False)
    assert (done.returncode, done.stderr) == (0, "")


def test_zsh_completes_commands_flags_choices_and_files(scripts: dict[str, Path],
                                                       tmp_path: Path) -> None:
    script = scripts["zsh"]
    assert sorted(zsh_complete(script, "stepbuild ")) == sorted(command_names())
    assert zsh_complete(script, "stepbuild bu") == ["build"]
    assert zsh_complete(script, "stepbuild build --no-c") == ["--no-cache", "--no-cache-filter"]
    assert zsh_complete(script, "stepbuild build --network ") == ["default", "none", "host"]
    assert zsh_complete(script, "stepbuild build --network=") == ["default", "none", "host"]
    assert zsh_complete(script, "stepbuild completion ") == ["bash", "zsh", "fish"]
    (tmp_path / "Containerfile").write_text("FROM scratch\n")
    assert zsh_complete(script, "stepbuild build -f Cont", cwd=tmp_path) == ["Containerfile"]


# --- fish ---------------------------------------------------------------------------------------


def fish_complete(script: Path, line: str, cwd: Path | None = None) -> list[str]:
    done = subprocess.run([shell("fish"), "--no-config", "-c",
                           f"source {shlex.quote(str(script))}; complete -C {shlex.quote(line)}"],
                          cwd=cwd, capture_output=True, text=True, timeout=30, check=True)
    return [row.split("\t")[0] for row in done.stdout.splitlines()]


def test_fish_parses_the_script(scripts: dict[str, Path]) -> None:
    done = subprocess.run([shell("fish"), "--no-execute", str(scripts["fish"])],
                          capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr) == (0, "")


def test_fish_completes_commands_flags_choices_and_files(scripts: dict[str, Path],
                                                        tmp_path: Path) -> None:
    script = scripts["fish"]
    assert sorted(fish_complete(script, "stepbuild ")) == sorted(command_names())
    assert fish_complete(script, "stepbuild bu") == ["build"]
    assert fish_complete(script, "stepbuild build --no-c") == ["--no-cache",
                                                               "--no-cache-filter"]
    assert sorted(fish_complete(script, "stepbuild build --network ")) == [
        "default", "host", "none"]
    assert sorted(fish_complete(script, "stepbuild completion ")) == ["bash", "fish", "zsh"]
    (tmp_path / "Containerfile").write_text("FROM scratch\n")
    assert fish_complete(script, "stepbuild build -f Cont", cwd=tmp_path) == ["Containerfile"]
