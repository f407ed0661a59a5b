"""ARG declarations in a scope (build/plan.py): pure, no root."""

from __future__ import annotations

from stepbuild.build.plan import Scope, declare_arg
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
