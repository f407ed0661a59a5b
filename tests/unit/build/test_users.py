"""USER / --chown resolution against an image's passwd and group files."""

from __future__ import annotations

import pytest

from stepbuild.build.users import Ids, UserError, resolve

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n# comment\n"
GROUP = "root:x:0:\napp:x:1001:\nwheel:x:10:app,other\nstaff:x:50:\n"


@pytest.mark.parametrize(("spec", "expected"), [
    ("root", Ids(0, 0, (), "/root")),
    ("app", Ids(1000, 1001, (10,), "/home/app")),
    ("app:staff", Ids(1000, 50, (), "/home/app")),
    ("1000", Ids(1000, 1001, (10,), "/home/app")),
    ("4242", Ids(4242, 0)),
    ("4242:7", Ids(4242, 7)),
    ("app:0", Ids(1000, 0, (), "/home/app")),
])
def test_resolve(spec: str, expected: Ids) -> None:
    assert resolve(spec, PASSWD, GROUP) == expected


@pytest.mark.parametrize("spec", ["nobody", "app:nogroup", "ghost:0"])
def test_unknown_names_are_errors(spec: str) -> None:
    with pytest.raises(UserError):
        resolve(spec, PASSWD, GROUP)
