"""settings.py: where config.toml is found, how two files merge, and its errors (file, key,
line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepbuild.config.rules import Mirror
from stepbuild.config.settings import config_files, load_settings
from stepbuild.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_stepbuild_config_names_the_only_file(tmp_path: Path) -> None:
    named = write(tmp_path / "mine.toml", "[defaults]\njobs = 3\n")
    write(tmp_path / "xdg" / "stepbuild" / "config.toml", "[defaults]\njobs = 9\n")
    env = {"STEPBUILD_CONFIG": str(named), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert config_files(env) == [named]
    assert load_settings(env).defaults == {"jobs": 3}


def test_a_missing_stepbuild_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as caught:
        config_files({"STEPBUILD_CONFIG": str(tmp_path / "none.toml")})
    assert caught.value.path == str(tmp_path / "none.toml")


def test_the_user_file_is_found_under_xdg_config_home(tmp_path: Path) -> None:
    user = write(tmp_path / "xdg" / "stepbuild" / "config.toml", "")
    assert config_files({"XDG_CONFIG_HOME": str(tmp_path / "xdg")})[-1:] == [user]
    home_file = write(tmp_path / "home" / ".config" / "stepbuild" / "config.toml", "")
    assert config_files({"HOME": str(tmp_path / "home")})[-1:] == [home_file]


def test_the_user_file_wins_key_by_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    system = write(tmp_path / "etc" / "config.toml", """
[defaults]
jobs = 2
network = "none"

[registries."docker.io"]
mirrors = ["system-mirror.example"]
blocked = true
""")
    user = write(tmp_path / "xdg" / "stepbuild" / "config.toml", """
[defaults]
jobs = 8

[registries."docker.io"]
mirrors = ["user-mirror.example:5000/hub"]
""")
    monkeypatch.setattr("stepbuild.config.settings.SYSTEM_CONFIG", system)
    settings = load_settings({"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert settings.files == (str(system), str(user))
    assert settings.defaults == {"jobs": 8, "network": "none"}
    assert settings.default_sources == {"jobs": str(user), "network": str(system)}
    (rule,) = list(settings.registries)
    assert rule.mirrors == (Mirror("user-mirror.example:5000/hub"),)
    assert rule.blocked is True
    assert rule.source == str(system)  # the file that blocks it


def test_every_key_of_the_schema(tmp_path: Path) -> None:
    ca = write(tmp_path / "ca.crt", "not checked here\n")
    path = write(tmp_path / "config.toml", f"""
[defaults]
root = "~/store"
jobs = 4
network = "host"
isolation = "chroot"

[registries."registry.example:5000/team"]
mirrors = ["a.example", "[::1]:5000/m"]
insecure = true
ca-file = "{ca}"
blocked = false

[registries."*.corp.example"]
insecure = true
""")
    settings = load_settings({"STEPBUILD_CONFIG": str(path), "HOME": "/home/u"})
    assert settings.defaults["root"].endswith("/store")
    assert not settings.defaults["root"].startswith("~")
    team, corp = list(settings.registries)
    assert (team.prefix, team.insecure, team.ca_file, team.blocked) == (
        "registry.example:5000/team", True, str(ca), False)
    assert [m.location for m in team.mirrors] == ["a.example", "[::1]:5000/m"]
    assert corp.prefix == "*.corp.example"


@pytest.mark.parametrize(("text", "key", "line", "problem"), [
    ('[registries."docker.io"]\nmirrors = "m.example"\n',
     'registries."docker.io".mirrors', 2, "must be a list of strings"),
    ('[registries."docker.io"]\nmirrors = [1]\n',
     'registries."docker.io".mirrors', 2, "must be a list of strings"),
    ("[defaults]\n\njobs = 0\n", "defaults.jobs", 3, "must be a positive integer"),
    ("[defaults]\njobs = true\n", "defaults.jobs", 2, "must be a positive integer"),
    ("[defaults]\nroot = \"relative/dir\"\n", "defaults.root", 2, "must be an absolute path"),
    ("[defaults]\nstore = \"/x\"\n", "defaults.store", 2, "is not a setting"),
    ("colour = true\n", "colour", 1, "is not a setting"),
    ("defaults = 3\n", "defaults", 1, "must be a table"),
    ('[registries."docker.io"]\ninsecure = "yes"\n',
     'registries."docker.io".insecure', 2, "must be true or false"),
    ("# mine\n[registries.'docker.io']\nmirror = []\n",
     'registries."docker.io".mirror', 3, "is not a setting"),
    ('[registries."http://docker.io"]\n', 'registries."http://docker.io"', 1,
     "is not a registry prefix"),
    ('[registries."docker.io"]\nmirrors = ["http://m.example"]\n',
     'registries."docker.io".mirrors', 2, "which is not HOST[:PORT][/PATH]"),
    ('[registries."docker.io"]\nca-file = "/nonexistent/ca.crt"\n',
     'registries."docker.io".ca-file', 2, "which is not a file"),
    ('registries = {"docker.io" = {blocked = 1}}\n',
     'registries."docker.io".blocked', None, "must be true or false"),
])
def test_errors_name_the_file_the_key_and_the_line(tmp_path: Path, text: str, key: str,
                                                   line: int | None, problem: str) -> None:
    path = write(tmp_path / "config.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_settings({"STEPBUILD_CONFIG": str(path)})
    error = caught.value
    assert (error.path, error.key, error.line) == (str(path), key, line)
    assert problem in error.problem
    where = f"{path}:{line}" if line else str(path)
    assert error.message.startswith(f"{where}: {key} ")
    assert error.exit_code == 2


def test_a_syntax_error_has_tomllibs_line(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", "[defaults]\njobs = 4\nnetwork = none\n")
    with pytest.raises(ConfigError, match="is not valid TOML") as caught:
        load_settings({"STEPBUILD_CONFIG": str(path)})
    assert (caught.value.key, caught.value.line) == (None, 3)


def test_dev_null_reads_nothing() -> None:
    settings = load_settings({"STEPBUILD_CONFIG": "/dev/null"})
    assert (dict(settings.defaults), list(settings.registries)) == ({}, [])


def test_gc_keep_storage_is_a_size(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[defaults]\ngc-keep-storage = "10GB"\n')
    assert load_settings({"STEPBUILD_CONFIG": str(good)}).defaults["gc-keep-storage"] == "10GB"
    bad = tmp_path / "bad.toml"
    bad.write_text('[defaults]\ngc-keep-storage = 10\n')
    with pytest.raises(ConfigError, match="gc-keep-storage must be a size"):
        load_settings({"STEPBUILD_CONFIG": str(bad)})
