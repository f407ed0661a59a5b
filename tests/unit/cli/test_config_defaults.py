"""cli/config_defaults.py: config.toml's [defaults] become the parser's defaults; a flag given
on the command line wins; a bad file is one error when a command runs, never at --help."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepbuild.cli import main as cli
from stepbuild.cli.config_defaults import install
from stepbuild.errors import ConfigError

CONFIG = """
[defaults]
root = "/srv/stepbuild-store"
jobs = 3
network = "none"
isolation = "chroot"
"""


def parse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, *argv: str,
          env: dict[str, str] | None = None) -> object:
    config = tmp_path / "config.toml"
    config.write_text(text)
    monkeypatch.setenv("STEPBUILD_CONFIG", str(config))
    monkeypatch.delenv("STEPBUILD_ROOT", raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    parser = cli._argument_parser()
    install(parser)
    return parser.parse_args(list(argv))


def test_the_config_supplies_the_defaults(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    options = parse(monkeypatch, tmp_path, CONFIG, "build", ".")
    assert (options.root, options.jobs, options.network, options.isolation) == (
        "/srv/stepbuild-store", 3, "none", "chroot")
    run = parse(monkeypatch, tmp_path, CONFIG, "run", "img")
    assert (run.network, run.isolation) == ("none", "chroot")


def test_a_flag_given_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    options = parse(monkeypatch, tmp_path, CONFIG, "--root", "/elsewhere", "build",
                    "--jobs", "1", "--network", "default", "--isolation", "auto", ".")
    assert (options.root, options.jobs, options.network, options.isolation) == (
        "/elsewhere", 1, "default", "auto")


def test_stepbuild_root_beats_the_files_root(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    options = parse(monkeypatch, tmp_path, CONFIG, "images",
                    env={"STEPBUILD_ROOT": "/from/env"})
    assert options.root is None  # store_root() then takes $STEPBUILD_ROOT


def test_a_value_outside_the_choices_fails_when_a_command_runs(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    options = parse(monkeypatch, tmp_path, '[defaults]\nnetwork = "bridge"\n', "build", ".")
    with pytest.raises(ConfigError) as caught:
        options.run(options)
    assert caught.value.key == "defaults.network"
    assert "must be one of default, none, host, not 'bridge'" in caught.value.message


def test_main_prints_one_line_and_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[registries."docker.io"]\nmirrors = "m.example"\n')
    monkeypatch.setenv("STEPBUILD_CONFIG", str(config))
    assert cli.main(["images"]) == 2
    assert capsys.readouterr().err == (f"stepbuild: error: {config}:2: registries.\"docker.io\""
                                       ".mirrors must be a list of strings\n")
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])  # help still works with a broken file
    assert done.value.code == 0
