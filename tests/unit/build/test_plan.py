"""ARG declarations in a scope and platforms in normal form (build/plan.py): pure, no root."""

from __future__ import annotations

import pytest

from stepbuild.build.plan import Scope, declare_arg, normalise_platform
from stepbuild.frontend import instructions as ins


def test_an_arg_name_is_expanded_like_its_default() -> None:
    scope = Scope(env=("src=file3",))
    declared = declare_arg(scope, ins.ArgDeclaration("${src}", "default-$src"), {}, {})
    assert declared.args == {"file3": "default-file3"}
    given = declare_arg(scope, ins.ArgDeclaration("${src}", "default"), {"file3": "given"}, {})
    assert given.args == {"file3": "given"}  # --build-arg names the expanded name


def test_a_plain_arg_name_is_itself() -> None:
    declared = declare_arg(Scope(), ins.ArgDeclaration("V", None), {}, {"V": "global"})
    assert declared.args == {"V": "global"}


def test_platforms_are_compared_in_containerds_normal_form(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("stepbuild.build.plan._host_arch", lambda: "amd64")
    amd64 = ("linux", "amd64", "v1")
    for same in ("linux/amd64", "linux/amd64/v1", "LINUX/AMD64", "linux/x86_64", "linux/x86-64",
                 "amd64", "linux"):
        assert normalise_platform(same) == amd64, same
    assert normalise_platform("linux/arm64") == normalise_platform("linux/aarch64/v8") \
        == ("linux", "arm64", "v8")
    assert normalise_platform("linux/armhf") == normalise_platform("linux/arm") \
        == ("linux", "arm", "v7")
    assert normalise_platform("linux/amd64/v2") == ("linux", "amd64", "v2")
    for bad in ("", "linux/", "/amd64", "linux/amd64/v1/x"):
        assert normalise_platform(bad) is None, bad
