"""RUN steps' preparation: heredoc scripts, and what the step key covers (the script body,
the --mounts' declarations; never a secret's value)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stepbuild.build import run as run_step
from stepbuild.build.mounts.plan import PlannedMount
from stepbuild.build.mounts.secrets import SecretSource
from stepbuild.build.plan import Scope
from stepbuild.build.state import ImageState
from stepbuild.build.users import UserError
from stepbuild.errors import PlanError
from stepbuild.frontend import instructions as ins
from stepbuild.frontend.parse import parse
from stepbuild.sandbox.limits import Limits


def run_of(text: str) -> ins.Run:
    run = parse("FROM scratch\n" + text).instructions[1]
    assert isinstance(run, ins.Run)
    return run


# --- heredocs ----------------------------------------------------------------------------------


def test_shebang_heredoc_runs_as_a_file() -> None:
    run = run_of("RUN <<-EOT\n#!/usr/bin/env python3\n\tprint('$HOME')\nEOT\n")
    assert run_step.heredoc_script(run.command) == ("EOT", "#!/usr/bin/env python3\n"
                                                           "print('$HOME')\n")
    assert run_step.run_argv(run.command, ("/bin/sh", "-c")) == ["/bin/sh", "-c",
                                                                 "/dev/pipes/EOT"]


@pytest.mark.parametrize("text", [
    "RUN <<EOF\necho hi\nEOF\n",  # no #!: the body is the shell's command text
    "RUN <<-EOF\n\t#!/bin/sh\nEOF\n",  # BuildKit tests the body before stripping tabs
    "RUN cat <<EOF\n#!/bin/sh\nEOF\n",  # a heredoc feeding a command
    'RUN ["cat"]\n',
])
def test_other_runs_are_not_scripts(text: str) -> None:
    assert run_step.heredoc_script(run_of(text).command) is None


def test_several_heredocs_go_to_the_shell() -> None:
    run = run_of("RUN cat <<A > /a && cat <<'B' > /b\none\nA\ntwo\nB\n")
    assert run_step.run_argv(run.command, ("/bin/sh", "-c")) == [
        "/bin/sh", "-c", "cat <<A > /a && cat <<'B' > /b\none\nA\ntwo\nB"]


# --- the step key ------------------------------------------------------------------------------


class FakeExecutor:
    build_args: dict[str, str] = {}
    network = "host"
    allow = frozenset({"network.host"})
    context = None  # no context bind here
    store = None
    secrets = {"tok": SecretSource("env", "NOT_READ_AT_PREPARE")}
    ssh: dict[str, str] = {}
    source_date_epoch = None
    limits = Limits()


def prepared_key(text: str, build: object | None = None) -> tuple[str, dict[str, Any]]:
    step = run_step.prepare(FakeExecutor(), run_of(text), ImageState(), Scope(), build)
    return step.key, step.inputs


def test_script_body_and_mounts_are_in_the_key_secret_values_are_not() -> None:
    key1, inputs = prepared_key("RUN <<EOF\n#!/bin/sh\necho one\nEOF\n")
    key2, _ = prepared_key("RUN <<EOF\n#!/bin/sh\necho two\nEOF\n")
    assert key1 != key2 and inputs["script"] == ["EOF", "#!/bin/sh\necho one\n"]
    plain, plain_inputs = prepared_key("RUN make\n")
    assert "mounts" not in plain_inputs and "script" not in plain_inputs  # old keys unchanged
    cached, inputs = prepared_key("RUN --mount=type=cache,target=/c make\n")
    assert cached != plain and inputs["mounts"][0]["type"] == "cache"
    secret, inputs = prepared_key("RUN --mount=type=secret,id=tok make\n")
    assert "NOT_READ_AT_PREPARE" not in repr(inputs)


class PlannedObserver:
    def __init__(self) -> None:
        self.planned: list[PlannedMount] = []

    def cache_mount_planned(self, p: PlannedMount) -> None:
        self.planned.append(p)


def test_the_builds_team_cache_hears_of_its_cache_mounts() -> None:
    team = PlannedObserver()
    prepared_key("RUN --mount=type=cache,target=/c,id=pip make\n", SimpleNamespace(team=team))
    assert [p.cache_id for p in team.planned] == ["pip"]


# --- the image's /etc/passwd -------------------------------------------------------------------


def test_user_ids_name_a_passwd_that_cannot_be_read(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").symlink_to("/etc/passwd")  # a loop inside the image root
    with pytest.raises(UserError, match="cannot read /etc/passwd in the image: .*symbolic"):
        run_step.user_ids(tmp_path, "someone")


def test_user_ids_refuse_a_passwd_that_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "etc" / "passwd").mkdir(parents=True)
    with pytest.raises(UserError, match="cannot read /etc/passwd in the image"):
        run_step.user_ids(tmp_path, "0")


def test_user_ids_without_passwd_take_numbers(tmp_path: Path) -> None:
    assert run_step.user_ids(tmp_path, "7:8").uid == 7


# --- --add-host ----------------------------------------------------------------------------------


def test_add_host_lines_follow_the_standard_hosts(tmp_path: Path) -> None:
    run_step.write_etc_files(tmp_path / "etc", "box", (("db", "192.0.2.1"), ("v6", "::1")),
                             private_network=False)
    lines = (tmp_path / "etc" / "hosts").read_text().splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert lines[-2:] == ["192.0.2.1\tdb", "::1\tv6"]


def test_add_host_is_in_the_key_only_when_given() -> None:
    class WithHosts(FakeExecutor):
        limits = Limits(add_hosts=(("db", "192.0.2.1"),))

    plain = run_step.prepare(FakeExecutor(), run_of("RUN true"), ImageState(), Scope(), None)
    hosts = run_step.prepare(WithHosts(), run_of("RUN true"), ImageState(), Scope(), None)
    assert "add_hosts" not in plain.inputs
    assert hosts.inputs["add_hosts"] == [["db", "192.0.2.1"]]
    assert hosts.key != plain.key


# --- the network -------------------------------------------------------------------------------


def network_of(text: str, network: str = "default", allow: frozenset[str] = frozenset()
               ) -> str:
    executor = SimpleNamespace(network=network, allow=allow)
    build = SimpleNamespace(stages=SimpleNamespace(filename="ctx/Stepfile"))
    return run_step.step_network(executor, run_of(text), build)  # type: ignore[arg-type]


def test_default_network_is_the_private_one() -> None:
    assert network_of("RUN make\n") == "private"
    assert network_of("RUN --network=default make\n") == "private"
    assert network_of("RUN --network=none make\n") == "none"
    assert network_of("RUN make\n", network="none") == "none"
    assert network_of("RUN make\n", network="host") == "host"


def test_run_network_host_needs_the_entitlement() -> None:
    with pytest.raises(PlanError) as refused:
        network_of("RUN --network=host make\n")
    rendered = refused.value.render()
    assert rendered.startswith("ctx/Stepfile:2:1: RUN --network=host needs the network.host"
                               " entitlement\n  RUN --network=host make\n")
    assert "--allow network.host" in rendered
    allowed = frozenset({"network.host"})
    assert network_of("RUN --network=host make\n", allow=allowed) == "host"


def test_network_is_in_the_step_key() -> None:
    step = run_step.prepare(FakeExecutor(), run_of("RUN make\n"), ImageState(), Scope(), None)
    other = run_step.prepare(FakeExecutor(), run_of("RUN --network=none make\n"), ImageState(),
                             Scope(), None)
    assert step.inputs["network"] == "host" and other.inputs["network"] == "none"
    assert step.key != other.key


def test_private_network_resolv_conf_names_the_stacks_resolver(tmp_path: Path) -> None:
    run_step.write_etc_files(tmp_path / "private", "box", private_network=True)
    resolv = (tmp_path / "private" / "resolv.conf").read_text()
    assert resolv.splitlines()[0] == "nameserver 10.0.2.3"
    assert resolv.count("nameserver") == 1
    run_step.write_etc_files(tmp_path / "host", "box", private_network=False)
    assert (tmp_path / "host" / "resolv.conf").read_text() == Path("/etc/resolv.conf").read_text()
