"""COPY/ADD --chown: numeric owners without a lookup, ids out of range refused, and lookup
errors located at the instruction."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepbuild.build.copy import chown_owner, numeric_owner
from stepbuild.build.copy_files import Owner
from stepbuild.build.users import UserError
from stepbuild.errors import BuildError


@pytest.mark.parametrize(("chown", "expected"), [
    ("1000", Owner(1000, 1000)),          # a lone uid is also the gid
    ("1000:50", Owner(1000, 50)),
    ("4294967294", Owner(4294967294, 4294967294)),
    ("app", None),
    ("1000:staff", None),
    ("1000:", None),                      # the primary group comes from passwd
])
def test_numeric_owner(chown: str, expected: Owner | None) -> None:
    assert numeric_owner(chown) == expected


@pytest.mark.parametrize("chown", ["4294967296", "4294967295", "0:4294967296"])
def test_numeric_owner_out_of_range(chown: str) -> None:
    with pytest.raises(UserError, match="out of range"):
        numeric_owner(chown)


def test_chown_errors_are_located(tmp_path: Path) -> None:
    with pytest.raises(BuildError) as caught:
        chown_owner(tmp_path, "ghost", "Stepfile:3:1")
    assert caught.value.message.startswith("Stepfile:3:1: --chown=ghost: unable to find user")


def test_chown_with_a_passwd_loop_is_located(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(BuildError, match="Stepfile:2:1: --chown=app: cannot read /etc/passwd"):
        chown_owner(tmp_path, "app", "Stepfile:2:1")
