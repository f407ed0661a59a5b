"""ARG declarations in a scope, the predefined platform ARGs and each stage's platform
(build/plan.py): pure, no root."""

from __future__ import annotations

import pytest

from stepbuild.build.plan import (
    Scope,
    Stages,
    declare_arg,
    global_args,
    split_stages,
    stage_platforms,
)
from stepbuild.errors import PlanError
from stepbuild.frontend import instructions as ins
from stepbuild.frontend.parse import parse
from stepbuild.oci.platform import Platform


def test_an_arg_name_is_expanded_like_its_default() -> None:
    scope = Scope(env=("src=file3",))
    declared = declare_arg(scope, ins.ArgDeclaration("${src}", "default-$src"), {}, {})
    assert declared.args == {"file3": "default-file3"}
    given = declare_arg(scope, ins.ArgDeclaration("${src}", "default"), {"file3": "given"}, {})
    assert given.args == {"file3": "given"}  # --build-arg names the expanded name


def test_a_plain_arg_name_is_itself() -> None:
    declared = declare_arg(Scope(), ins.ArgDeclaration("V", None), {}, {"V": "global"})
    assert declared.args == {"V": "global"}


ARM64 = Platform.of("linux", "arm64")
AMD64 = Platform.of("linux", "amd64")


def stages_of(text: str) -> Stages:
    return split_stages(parse(text, "Stepfile"))


@pytest.mark.parametrize(("target", "expected"), [
    (AMD64, {"TARGETPLATFORM": "linux/amd64", "TARGETOS": "linux", "TARGETARCH": "amd64",
             "TARGETVARIANT": ""}),
    (ARM64, {"TARGETPLATFORM": "linux/arm64", "TARGETOS": "linux", "TARGETARCH": "arm64",
             "TARGETVARIANT": ""}),
    (Platform.of("linux", "arm", "v7"), {"TARGETPLATFORM": "linux/arm/v7",
                                         "TARGETARCH": "arm", "TARGETVARIANT": "v7"}),
])
def test_target_args_are_the_platform_built_and_build_args_this_machine(
        target: Platform, expected: dict[str, str]) -> None:
    values = global_args(stages_of("FROM scratch\n"), {}, "\\", target, AMD64)
    assert expected.items() <= values.items()
    assert {k: values[k] for k in ("BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT")} \
        == {"BUILDPLATFORM": "linux/amd64", "BUILDOS": "linux", "BUILDARCH": "amd64",
            "BUILDVARIANT": ""}


def test_a_global_redeclaration_keeps_the_predefined_value() -> None:
    # BuildKit: `ARG TARGETARCH` before FROM (no default) is the predefined value, not unset
    values = global_args(stages_of("ARG TARGETARCH\nARG OUT=bin-$TARGETARCH\nFROM scratch\n"),
                         {}, "\\", ARM64, AMD64)
    assert values["TARGETARCH"] == "arm64"
    assert values["OUT"] == "bin-arm64"


def test_a_stage_sees_a_platform_arg_only_once_it_declares_it() -> None:
    globals_ = global_args(stages_of("FROM scratch\n"), {}, "\\", ARM64, AMD64)
    undeclared = Scope()
    assert undeclared.expand("[$TARGETARCH]") == "[]"
    declared = declare_arg(undeclared, ins.ArgDeclaration("TARGETARCH", None), {}, globals_)
    assert declared.expand("[$TARGETARCH]") == "[arm64]"


@pytest.mark.parametrize(("from_line", "expected"), [
    ("FROM scratch", ARM64),  # the target platform
    ("FROM --platform=$BUILDPLATFORM scratch", AMD64),
    ("FROM --platform=${TARGETPLATFORM} scratch", ARM64),
    ("FROM --platform=linux/aarch64 scratch", ARM64),
    ("FROM --platform=$TARGETOS/amd64 scratch", AMD64),
    ("FROM --platform=$WANTED scratch", Platform.of("linux", "arm", "v7")),
    ("FROM --platform=$UNSET scratch", ARM64),  # empty after expansion: as none
])
def test_a_stage_platform_is_its_from_platform_else_the_target(
        from_line: str, expected: Platform) -> None:
    stages = stages_of(f"ARG WANTED=linux/arm/v7\n{from_line}\n")
    globals_ = global_args(stages, {}, "\\", ARM64, AMD64)
    assert stage_platforms(stages, [0], globals_, "\\", ARM64) == {0: expected}


def test_a_from_platform_that_is_no_platform_is_a_located_error() -> None:
    stages = stages_of("FROM scratch AS a\nFROM --platform=bogus/x/y/z scratch\n")
    globals_ = global_args(stages, {}, "\\", AMD64, AMD64)
    with pytest.raises(PlanError) as refused:
        stage_platforms(stages, [0, 1], globals_, "\\", AMD64)
    assert refused.value.render().startswith(
        "Stepfile:2:1: --platform=bogus/x/y/z: not a platform")
    assert refused.value.hint is not None and "linux/amd64" in refused.value.hint
    # a stage the target does not need is not looked at
    assert stage_platforms(stages, [0], globals_, "\\", AMD64) == {0: AMD64}
