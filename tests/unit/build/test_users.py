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


@pytest.mark.parametrize(("spec", "what"), [
    ("4294967296", "uid 4294967296"),
    ("4294967295", "uid 4294967295"),      # (uid_t)-1: setuid(2) and chown(2) refuse it too
    ("0:4294967296", "gid 4294967296"),
    ("0:4294967295", "gid 4294967295"),
    ("99999999999999999999", "uid 99999999999999999999"),
])
def test_ids_out_of_range_are_errors(spec: str, what: str) -> None:
    with pytest.raises(UserError, match=f"{what} is out of range"):
        resolve(spec, PASSWD, GROUP)


def test_largest_id_is_accepted() -> None:
    assert resolve("4294967294:4294967294", PASSWD, GROUP) == Ids(4294967294, 4294967294)


@pytest.mark.parametrize(("passwd", "group", "spec"), [
    ("big:x:4294967296:0::/:/bin/sh\n", "", "big"),        # a name whose uid is too large
    ("big:x:1:4294967295::/:/bin/sh\n", "", "big"),        # ... or whose primary gid is
    ("", "huge:x:4294967296:\n", "0:huge"),                # a group whose gid is too large
    ("app:x:1:1::/:/bin/sh\n", "huge:x:4294967296:app\n", "app"),  # a supplementary one
])
def test_ids_out_of_range_in_the_image_files_are_errors(passwd: str, group: str,
                                                        spec: str) -> None:
    with pytest.raises(UserError, match="out of range"):
        resolve(spec, passwd, group)


def test_non_ascii_digits_are_names_not_ids() -> None:
    # "²".isdigit() is True but int("²") fails: it must be looked up as a name, not crash
    with pytest.raises(UserError, match="unable to find user ²"):
        resolve("²", PASSWD, GROUP)
