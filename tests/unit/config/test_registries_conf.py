"""registries_conf.py: containers-registries.conf(5) files, their order, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepbuild.config import registries_conf as conf
from stepbuild.config import registry_rules
from stepbuild.config.rules import Mirror, RegistryRule
from stepbuild.errors import ConfigError

PODMAN_STYLE = """
unqualified-search-registries = ["docker.io", "quay.io"]
short-name-mode = "enforcing"

[aliases]
"busybox" = "docker.io/library/busybox"

[[registry]]
prefix = "docker.io"
location = "docker.io"
mirror-by-digest-only = false

[[registry.mirror]]
location = "mirror.example:5000"
insecure = true

[[registry.mirror]]
location = "second.example/hub"
pull-from-mirror = "digest-only"

[[registry]]
location = "insecure.example:5000"
insecure = true

[[registry]]
prefix = "quay.io/bad"
blocked = true

[[registry]]
prefix = "example.com/foo"
location = "internal.example/bar"
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_v2_format(tmp_path: Path) -> None:
    path = write(tmp_path / "registries.conf", PODMAN_STYLE)
    rules = {r.prefix: r for r in conf.load_registries_conf(
        {"STEPBUILD_REGISTRIES_CONF": str(path)})}
    assert rules["docker.io"] == RegistryRule("docker.io", mirrors=(
        Mirror("mirror.example:5000", True), Mirror("second.example/hub", None, "digest-only")),
        source=str(path))
    assert rules["insecure.example:5000"].insecure is True
    assert rules["quay.io/bad"].blocked is True
    assert rules["example.com/foo"].location == "internal.example/bar"


def test_the_v1_lists(tmp_path: Path) -> None:
    path = write(tmp_path / "registries.conf", """
[registries.search]
registries = ["docker.io"]
[registries.insecure]
registries = ["old.example:5000"]
[registries.block]
registries = ["bad.example"]
""")
    rules = {r.prefix: r for r in conf.load_registries_conf(
        {"CONTAINERS_REGISTRIES_CONF": str(path)})}
    assert rules == {
        "old.example:5000": RegistryRule("old.example:5000", insecure=True, source=str(path)),
        "bad.example": RegistryRule("bad.example", blocked=True, source=str(path))}


def test_stepbuilds_variable_wins_over_podmans(tmp_path: Path) -> None:
    ours = write(tmp_path / "ours.conf", "")
    theirs = write(tmp_path / "theirs.conf", "")
    assert conf.registries_conf_files({"STEPBUILD_REGISTRIES_CONF": str(ours),
                                       "CONTAINERS_REGISTRIES_CONF": str(theirs)}) == [ours]


def test_drop_ins_follow_the_main_file_and_win(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    main = write(tmp_path / "registries.conf", '[[registry]]\nprefix = "quay.io"\n'
                 'blocked = true\n')
    write(tmp_path / "registries.conf.d" / "20-b.conf",
          '[[registry]]\nprefix = "quay.io"\ninsecure = true\n')
    write(tmp_path / "registries.conf.d" / "10-a.conf", "")
    write(tmp_path / "registries.conf.d" / "README", "not a .conf")
    monkeypatch.setattr(conf, "SYSTEM_FILE", main)
    monkeypatch.setattr(conf, "DROP_IN_DIR", tmp_path / "registries.conf.d")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "no-user")}
    assert [p.name for p in conf.registries_conf_files(env)] == [
        "registries.conf", "10-a.conf", "20-b.conf"]
    (rule,) = list(conf.load_registries_conf(env))
    assert (rule.blocked, rule.insecure) == (False, True)
    user = write(tmp_path / "user" / "containers" / "registries.conf", "")
    assert conf.registries_conf_files({"XDG_CONFIG_HOME": str(tmp_path / "user")})[0] == user


def test_config_toml_wins_over_registries_conf_for_the_same_prefix(tmp_path: Path) -> None:
    registries = write(tmp_path / "registries.conf", PODMAN_STYLE)
    config = write(tmp_path / "config.toml", '[registries."docker.io"]\n'
                   'mirrors = ["mine.example"]\n')
    rules = {r.prefix: r for r in registry_rules({"STEPBUILD_REGISTRIES_CONF": str(registries),
                                                  "STEPBUILD_CONFIG": str(config)})}
    assert rules["docker.io"].mirrors == (Mirror("mine.example"),)
    assert rules["docker.io"].source == str(config)
    assert rules["quay.io/bad"].blocked is True


@pytest.mark.parametrize(("text", "key", "problem"), [
    ('[[registry]]\nprefix = "a.example"\ninsecure = "yes"\n', "registry[0].insecure",
     "must be true or false"),
    ("[[registry]]\ninsecure = true\n", "registry[0]", "needs a prefix or a location"),
    ('[[registry]]\nprefix = "a"\n[[registry]]\nprefix = "b"\n[[registry.mirror]]\n'
     'insecure = true\n', "registry[1].mirror[0]", "needs a location"),
    ('[[registry]]\nprefix = "a"\n[[registry.mirror]]\nlocation = "m"\n'
     'pull-from-mirror = "sometimes"\n', "registry[0].mirror[0].pull-from-mirror",
     "must be one of"),
    ('[[registry]]\nprefix = "*.a.example"\nlocation = "b.example"\n',
     "registry[0].location", "wildcard"),
    ('registry = "docker.io"\n', "registry", "must be an array of tables"),
    ("[registries.block]\nregistries = [1]\n", "registries.block.registries",
     "must be a list of strings"),
])
def test_errors_name_the_file_and_key(tmp_path: Path, text: str, key: str,
                                      problem: str) -> None:
    path = write(tmp_path / "registries.conf", text)
    with pytest.raises(ConfigError) as caught:
        conf.load_registries_conf({"STEPBUILD_REGISTRIES_CONF": str(path)})
    assert (caught.value.path, caught.value.key) == (str(path), key)
    assert problem in caught.value.problem


def test_a_missing_named_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as caught:
        conf.registries_conf_files({"CONTAINERS_REGISTRIES_CONF": str(tmp_path / "x.conf")})
    assert caught.value.hint == "CONTAINERS_REGISTRIES_CONF names it"
