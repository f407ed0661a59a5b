"""Registry mirrors, blocks and per-registry TLS from config.toml and registries.conf, for real.

The issue's proof: a build whose FROM names an image on a registry that is down (an unused
port on 127.0.0.1) succeeds through the configured mirror (a real registry, the image pushed
there with `stepbuild push`), once configured by config.toml and once by registries.conf; the
image keeps its name. Mirrors that are down, answer 503 or lack the image are skipped (a -v
note) and the next one, or the registry itself, serves it. A blocked prefix refuses pulls and
pushes, naming the file. `insecure = true` for one plain-HTTP registry off loopback lets a
build pull from it without --tls-verify=false, while the TLS registry it pushes to in the same
build is still verified (it fails without its CA, passes with the config's ca-file). A bad
config file is one error naming the file, the key and the line.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.integration import registry_fixture
from tests.integration import test_build_registry_flags as off_loopback
from tests.integration.builds import Stepbuild, assert_clear_error, base_image, write_context
from tests.integration.registry_fixture import PASSWORD, USER, RunningRegistry
from tests.local_http import LocalHTTPServer

pytestmark = pytest.mark.root

plain_registry = registry_fixture.plain_registry
tls_registry = registry_fixture.tls_registry
off_loopback_address = off_loopback.off_loopback_address  # a plain-HTTP registry not on lo
remote_http_registry = off_loopback.remote_http_registry

EPOCH = ("--build-arg", "SOURCE_DATE_EPOCH=1700000000")
CHILD = 'RUN echo through-the-mirror > /m\nCMD ["cat", "/m"]\n'


@pytest.fixture(autouse=True)
def hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the machine's config files or ~/.docker/config.json: each names its own."""
    monkeypatch.setenv("STEPBUILD_CONFIG", "/dev/null")
    monkeypatch.setenv("STEPBUILD_REGISTRIES_CONF", "/dev/null")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mirrors")


@pytest.fixture(scope="module")
def publisher(work: Path) -> Stepbuild:
    sb = Stepbuild(work / "publisher")
    base_image(sb, work, *EPOCH)
    return sb


@pytest.fixture(scope="module")
def mirrored(publisher: Stepbuild, plain_registry: RunningRegistry) -> str:
    """The base, pushed to the mirror (the plain registry) as `team/base:1`; that reference."""
    ref = f"{plain_registry.host}/team/base:1"
    publisher("push", "-q", "base", ref, env={"STEPBUILD_CONFIG": "/dev/null",
                                              "STEPBUILD_REGISTRIES_CONF": "/dev/null"})
    return ref


@pytest.fixture()
def down() -> str:
    """A registry that is down: a port on 127.0.0.1 nothing listens on."""
    return f"127.0.0.1:{registry_fixture.free_port()}"


@pytest.fixture()
def unavailable() -> Iterator[str]:
    """A "mirror" that answers 503 to everything: its host."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with LocalHTTPServer(Handler, poll=0.01) as server:
        yield f"127.0.0.1:{server.port}"


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def images(sb: Stepbuild) -> str:
    return sb("images").stdout


def test_from_a_registry_that_is_down_through_the_config_toml_mirror(
        mirrored: str, plain_registry: RunningRegistry, down: str, tmp_path: Path) -> None:
    config = write(tmp_path / "config.toml",
                   f'[registries."{down}"]\nmirrors = ["{plain_registry.host}"]\n')
    sb = Stepbuild(tmp_path / "store")
    context = write_context(tmp_path / "ctx", f"FROM {down}/team/base:1\n{CHILD}")
    built = sb("build", "-t", "child", str(context), env={"STEPBUILD_CONFIG": config})
    assert f"pulled {down}/team/base:1@sha256:" in built.stderr
    assert f"from {plain_registry.host}/team/base" in built.stderr
    assert sb.run("child") == "through-the-mirror\n"
    assert f"{down}/team/base:1" in images(sb)  # the image keeps its own name

    without = Stepbuild(tmp_path / "without")("build", str(context), check=False)
    assert_clear_error(without, 1, "Stepfile:1", down)  # the mirror is what made it work


def test_the_same_through_registries_conf(
        mirrored: str, plain_registry: RunningRegistry, down: str, tmp_path: Path) -> None:
    conf = write(tmp_path / "registries.conf", f"""
unqualified-search-registries = ["docker.io"]

[[registry]]
prefix = "{down}/team"
location = "{down}/team"

[[registry.mirror]]
location = "{plain_registry.host}/team"
""")
    sb = Stepbuild(tmp_path / "store")
    context = write_context(tmp_path / "ctx", f"FROM {down}/team/base:1\n{CHILD}")
    built = sb("build", "-t", "child", str(context),
               env={"CONTAINERS_REGISTRIES_CONF": conf, "STEPBUILD_REGISTRIES_CONF": ""})
    assert f"pulled {down}/team/base:1@sha256:" in built.stderr
    assert sb.run("child") == "through-the-mirror\n"
    pulled = Stepbuild(tmp_path / "pull")("pull", f"{down}/team/base:1",
                                          env={"STEPBUILD_REGISTRIES_CONF": conf})
    assert pulled.stdout.strip().startswith("sha256:")


def test_failing_mirrors_are_skipped_with_a_note(
        mirrored: str, plain_registry: RunningRegistry, down: str, unavailable: str,
        tmp_path: Path) -> None:
    config = write(tmp_path / "config.toml", f"""
[registries."{plain_registry.host}/team"]
mirrors = ["{down}", "{unavailable}/x", "{plain_registry.host}/nothing-here"]
""")
    sb = Stepbuild(tmp_path / "store")
    context = write_context(tmp_path / "ctx", f"FROM {mirrored}\n{CHILD}")
    built = sb("build", "-v", "-t", "child", str(context), env={"STEPBUILD_CONFIG": config})
    # The prefix (HOST/team) is replaced by each mirror's location: `base` is left.
    for skipped in (f"{down}/base", f"{unavailable}/x/base",
                    f"{plain_registry.host}/nothing-here/base"):
        assert f"mirror {skipped} skipped" in built.stderr, built.stderr
    assert f"pulled {mirrored}@sha256:" in built.stderr
    assert sb.run("child") == "through-the-mirror\n"

    quiet = Stepbuild(tmp_path / "quiet")("build", str(context), env={"STEPBUILD_CONFIG": config})
    assert "skipped" not in quiet.stderr  # a note only with -v


def test_every_source_failing_names_the_mirrors_too(down: str, unavailable: str,
                                                   tmp_path: Path) -> None:
    config = write(tmp_path / "config.toml", f'[registries."{down}"]\nmirrors = '
                   f'["{unavailable}"]\n')
    result = Stepbuild(tmp_path / "store")("pull", f"{down}/app:1", check=False,
                                           env={"STEPBUILD_CONFIG": config})
    assert_clear_error(result, 1, down, f"mirrors tried first: {unavailable}/app")


def test_a_blocked_prefix_refuses_pulls_and_pushes_naming_the_file(
        mirrored: str, publisher: Stepbuild, plain_registry: RunningRegistry,
        tmp_path: Path) -> None:
    conf = write(tmp_path / "registries.conf",
                 f'[[registry]]\nprefix = "{plain_registry.host}/team"\nblocked = true\n')
    env = {"STEPBUILD_REGISTRIES_CONF": conf}
    context = write_context(tmp_path / "ctx", f"FROM {mirrored}\n{CHILD}")
    built = Stepbuild(tmp_path / "store")("build", str(context), check=False, env=env)
    assert_clear_error(built, 1, "Stepfile:1", f"{plain_registry.host}/team/base is blocked by"
                       f" {conf}")
    pushed = publisher("push", "base", f"{plain_registry.host}/team/other:1", check=False,
                       env=env)
    assert_clear_error(pushed, 1, f"blocked by {conf}")
    other = publisher("push", "-q", "base", f"{plain_registry.host}/free/base:1", env=env)
    assert other.stdout.startswith("sha256:")  # another prefix of the same registry is not


def authfile(directory: Path, host: str) -> str:
    path = directory / "auth.json"
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return str(path)


def test_one_insecure_registry_beside_a_verified_one(
        publisher: Stepbuild, remote_http_registry: str, tls_registry: RunningRegistry,
        tmp_path: Path) -> None:
    insecure = f'[registries."{remote_http_registry}"]\ninsecure = true\n'
    config = write(tmp_path / "config.toml", insecure)
    base = f"{remote_http_registry}/insecure/base:1"
    publisher("push", "-q", "base", base, env={"STEPBUILD_CONFIG": config})
    context = write_context(tmp_path / "ctx", f"FROM {base}\n{CHILD}")
    target = f"{tls_registry.host}/verified/child:1"
    args = ("build", "--authfile", authfile(tmp_path, tls_registry.host), "-t", target,
            "--push", str(context))

    unverified = Stepbuild(tmp_path / "a")(*args, check=False, env={"STEPBUILD_CONFIG": config})
    assert_clear_error(unverified, 1, f"pulled {base}@sha256:",  # plain HTTP, no flag
                       tls_registry.host, "TLS certificate not trusted")  # still verified

    trusted = write(tmp_path / "trusted.toml", insecure + f'[registries."{tls_registry.host}"]'
                    f'\nca-file = "{tls_registry.ca_file}"\n')
    built = Stepbuild(tmp_path / "b")(*args, env={"STEPBUILD_CONFIG": trusted})
    assert f"pushed {target}@sha256:" in built.stderr

    refused = Stepbuild(tmp_path / "c")("pull", base, check=False)  # no config: HTTPS only
    assert_clear_error(refused, 1, remote_http_registry)


def test_a_config_error_names_the_file_the_key_and_the_line(tmp_path: Path) -> None:
    config = write(tmp_path / "config.toml", '[defaults]\njobs = 2\n\n[registries."docker.io"]'
                   '\nmirrors = "mirror.example:5000"\n')
    result = Stepbuild(tmp_path / "store")("build", str(tmp_path), check=False,
                                           env={"STEPBUILD_CONFIG": config})
    assert_clear_error(result, 2, f'{config}:5: registries."docker.io".mirrors must be a list'
                       " of strings")
