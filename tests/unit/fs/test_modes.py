"""--chmod values (issue 11 item 6): octal and chmod(1) symbolic modes as BuildKit takes them,
and the mode of the directories a COPY makes on the way (BuildKit's `testCopyChmod`)."""

from __future__ import annotations

import pytest

from stepbuild.fs.modes import Chmod, parse


@pytest.mark.parametrize(("text", "octal"), [
    ("0644", 0o644), ("777", 0o777), ("0", 0), ("4755", 0o4755), ("00644", 0o644),
    ("7777", 0o7777),
])
def test_octal_values(text: str, octal: int) -> None:
    chmod = parse(text)
    assert chmod == Chmod(text, octal)
    assert chmod.apply(0o100600, is_dir=False) == octal  # whatever the source's mode


@pytest.mark.parametrize("text", [
    "", "64a", "10000", "8", "0755,u+x", "u+z", "u", "x+u", "u+x,", ",u+x", "u+x g-w", "u=gw",
    "+ug",
])
def test_invalid_values(text: str) -> None:
    with pytest.raises(ValueError):
        parse(text)


@pytest.mark.parametrize(("text", "mode", "is_dir", "expected"), [
    ("u+x", 0o644, False, 0o744),
    ("+x", 0o644, False, 0o755),
    ("go-w", 0o666, False, 0o644),
    ("a-x", 0o755, True, 0o644),
    ("=rw", 0o755, False, 0o666),
    ("u=rwx,go=rx", 0o600, False, 0o755),
    ("go=", 0o755, True, 0o700),
    ("ug+rw,o-rwx", 0o604, False, 0o660),
    # X: x for a directory, or for a file that had an x bit
    ("a+X", 0o644, False, 0o644),
    ("a+X", 0o744, False, 0o755),
    ("a+X", 0o644, True, 0o755),
    ("a=rX", 0o640, True, 0o555),
    # X looks at the mode before the change (BSD setmode), not at the u+x just made
    ("u+x,g+X", 0o644, False, 0o744),
    # copying a class's bits
    ("g=u", 0o640, False, 0o660),
    ("go=u-w", 0o750, False, 0o755),
    ("o+g", 0o650, False, 0o655),
    ("g=u,o=u", 0o700, False, 0o777),
    # set-id and sticky bits: s and t mean nothing for "other" alone; = without t keeps t
    ("u+s", 0o755, False, 0o4755),
    ("g+s", 0o755, True, 0o2755),
    ("+s", 0o755, False, 0o6755),
    ("o+s", 0o755, False, 0o755),
    ("+t", 0o777, True, 0o1777),
    ("o+t", 0o777, True, 0o777),
    ("u-s", 0o4755, False, 0o755),
    ("=rw", 0o1777, True, 0o1666),
    ("u=rwx", 0o4755, False, 0o755),
    ("=", 0o4755, False, 0),
])
def test_symbolic_values(text: str, mode: int, is_dir: bool, expected: int) -> None:
    chmod = parse(text)
    assert chmod == Chmod(text, None)
    file_type = 0o040000 if is_dir else 0o100000
    assert oct(chmod.apply(file_type | mode, is_dir)) == oct(expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("0777", 0o777),
    ("770", 0o770),
    ("0", 0),
    ("2775", 0o775),   # set-id and sticky bits are not given to the directories made
    ("u+x", 0o755),    # a symbolic mode has no mode of its own to give
])
def test_the_mode_of_directories_made_on_the_way(text: str, expected: int) -> None:
    assert oct(parse(text).created_dir_mode) == oct(expected)
