"""Config-only instructions as pure functions of (instruction, state, scope): no root, no I/O."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stepbuild.build.config import apply_config, arg_text, onbuild_triggers
from stepbuild.build.plan import Scope
from stepbuild.build.state import scratch
from stepbuild.errors import BuildError, PlanError
from stepbuild.frontend import instructions as ins
from stepbuild.frontend.parse import parse


def instructions(text: str) -> list[ins.Instruction]:
    return list(parse(text).instructions)


def test_each_instruction_changes_the_config_and_adds_a_history_entry() -> None:
    state, scope = scratch(), Scope(args={"APP": "web"})
    for instruction in instructions(
            "ENV HOME=/srv/$APP PATH=/bin\nWORKDIR $APP\nWORKDIR ../x/./y\nUSER 1000\n"
            "EXPOSE 80 443/udp\nLABEL a=$APP\nCMD run\nSTOPSIGNAL SIGTERM\n"):
        state = apply_config(instruction, state, scope)
    assert state.env == ("PATH=/bin", "HOME=/srv/web")  # PATH was set: it keeps its place
    assert state.workdir == "/x/y"  # relative to the previous WORKDIR, cleaned
    assert state.config["User"] == "1000"
    assert state.config["ExposedPorts"] == {"80/tcp": {}, "443/udp": {}}
    assert state.config["Labels"] == {"a": "web"}
    assert state.config["Cmd"] == ["/bin/sh", "-c", "run"]  # shell form: the SHELL in front
    assert state.config["StopSignal"] == "SIGTERM"
    assert [h["created_by"] for h in state.history] == [
        "ENV HOME=/srv/web PATH=/bin", "WORKDIR /web", "WORKDIR /x/y", "USER 1000",
        "EXPOSE 80 443/udp", "LABEL a=web", 'CMD ["/bin/sh" "-c" "run"]', "STOPSIGNAL SIGTERM"]
    assert all(h.get("empty_layer") for h in state.history)
    assert state.diff_ids == ()


def test_entrypoint_keeps_a_cmd_of_its_stage_and_maintainer_sets_the_author() -> None:
    state = scratch()
    for instruction in instructions('CMD ["a"]\nENTRYPOINT ["e"]\nMAINTAINER me@example\n'):
        state = apply_config(instruction, state, Scope())
    assert state.config["Entrypoint"] == ["e"]
    assert state.config["Cmd"] == ["a"]  # set in this stage: kept (Docker, BuildKit)
    assert state.author == "me@example"


def test_entrypoint_resets_a_cmd_inherited_from_the_base() -> None:
    [cmd, entrypoint] = instructions('CMD ["a"]\nENTRYPOINT ["e"]\n')
    base = apply_config(cmd, scratch(), Scope())
    child = replace(base, cmd_set=False)  # what the builder does when a stage starts
    state = apply_config(entrypoint, child, Scope())
    assert state.config["Entrypoint"] == ["e"] and "Cmd" not in state.config


def test_history_texts_are_buildkits() -> None:
    state = scratch()
    text = (r'CMD ["a", "b c\\"]' "\n"  # JSON: the second word ends in a backslash
            'ENTRYPOINT echo "hi"\nSHELL ["/bin/bash", "-c"]\nVOLUME /data /x\nENTRYPOINT []\n')
    for instruction in instructions(text):
        state = apply_config(instruction, state, Scope())
    assert [h["created_by"] for h in state.history] == [
        r'CMD ["a" "b c\\"]',  # Go's %q: each word quoted, space-separated
        r'ENTRYPOINT ["/bin/sh" "-c" "echo \"hi\""]',
        "SHELL [/bin/bash -c]",  # Go's %v
        "VOLUME [/data /x]",
        "ENTRYPOINT []",
    ]


def test_a_step_instruction_is_not_config() -> None:
    [run] = instructions("RUN true\n")
    with pytest.raises(BuildError, match="RUN is not supported here"):
        apply_config(run, scratch(), Scope())


def test_arg_history_text_keeps_defaults_as_written() -> None:
    [arg] = instructions("ARG A B=$X\n")
    assert isinstance(arg, ins.Arg)
    assert arg_text(arg) == "A B=$X"


def test_onbuild_triggers_run_in_the_child_and_are_not_inherited() -> None:
    parent = scratch()
    for instruction in instructions("ONBUILD ENV A=1\nONBUILD RUN make\n"):
        parent = apply_config(instruction, parent, Scope())
    [base] = instructions("FROM parent\n")
    assert isinstance(base, ins.From)
    child, triggers = onbuild_triggers(parent, "Stepfile", base)
    assert [type(t) for t in triggers] == [ins.Env, ins.Run]
    assert all(t.loc == base.loc for t in triggers)  # errors point at the FROM
    assert "OnBuild" not in child.config


def test_a_trigger_that_does_not_parse_is_an_error_at_its_from() -> None:
    parent = scratch().with_config("ONBUILD", OnBuild=["NOT AN INSTRUCTION"])
    [base] = instructions("FROM parent\n")
    assert isinstance(base, ins.From)
    with pytest.raises(PlanError, match="ONBUILD trigger of parent is invalid"):
        onbuild_triggers(parent, "Stepfile", base)
