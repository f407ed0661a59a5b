"""`COPY --chmod` / `ADD --chmod` values: an octal mode, or a chmod(1) symbolic mode.

BuildKit (dockerfile2llb `dispatchCopy`, Dockerfile frontend 1.14+) takes a value that parses
as an octal number up to 07777 as an absolute mode, and anything else as a symbolic mode
(`u+x`, `go-w`, `a=rX`), which it applies to each copied entry's own mode with BSD setmode(3)
semantics and a umask of 0 (package `tonistiigi/dchapes-mode`, used by fsutil's copier).

The two differ for the directories a COPY creates on the way to its destination (fsutil
`MkdirAll`, BuildKit's `testCopyChmod`): an octal mode gives them its permission bits (`COPY
--chmod=770 f /a/b/f` makes /a/b 0770, set-id and sticky bits dropped), while a symbolic mode
has no mode of its own to give, so they are 0755 as without --chmod.

Pure: no I/O.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass

DEFAULT_DIR_MODE = 0o755
EXPECTED = "expected an octal mode from 0 to 07777 (such as 0755) or a symbolic one (such as u+x)"

# The bits each "who" letter reaches: its rwx and, for u and g, its set-id bit. `a` is all of
# them (not the sticky bit, which only `t` names). Nobody named means every bit (umask 0).
_WHO_BITS = {"u": 0o4700, "g": 0o2070, "o": 0o0007, "a": 0o6777}
_EVERY_BIT = 0o7777
_PERM_BITS = {"r": 0o444, "w": 0o222, "x": 0o111, "s": 0o6000, "t": 0o1000}
_CLASS_SHIFT = {"u": 6, "g": 3, "o": 0}

# One clause: who letters, then one or more actions, each an operator with either
# permission letters or one class letter to copy from.
_CLAUSE = re.compile(r"[ugoa]*(?:[-+=](?:[ugo]|[rwxXst]*))+")
_ACTION = re.compile(r"([-+=])([ugo]|[rwxXst]*)")


@dataclass(frozen=True, slots=True)
class Chmod:
    """A parsed --chmod value: `octal` for an absolute mode, else the symbolic `text`."""

    text: str
    octal: int | None

    def apply(self, mode: int, is_dir: bool) -> int:
        """The permission bits (0o7777) a copied entry with permission bits `mode` gets."""
        if self.octal is not None:
            return self.octal
        original = stat.S_IMODE(mode)
        result = original
        for clause in self.text.split(","):
            result = _apply_clause(clause, result, original, is_dir)
        return result

    @property
    def created_dir_mode(self) -> int:
        """The mode of a directory the COPY makes on the way to its destination."""
        return self.octal & 0o777 if self.octal is not None else DEFAULT_DIR_MODE


def parse(text: str) -> Chmod:
    """Parse a --chmod value; ValueError (saying what is expected) when it is neither form."""
    if text and all(ch in "01234567" for ch in text):
        if int(text, 8) > 0o7777:
            raise ValueError(EXPECTED)
        return Chmod(text, int(text, 8))
    if not text or text[0].isdigit() or not all(
            _CLAUSE.fullmatch(clause) for clause in text.split(",")):
        raise ValueError(EXPECTED)  # BuildKit too: a leading digit means an octal mode
    return Chmod(text, None)


def _apply_clause(clause: str, mode: int, original: int, is_dir: bool) -> int:
    """One `who op perms [op perms]...` clause, as BSD setmode(3) applies it.

    `X` means x only for a directory or an entry that had an x bit before any change
    (`original`, as setmode does); `s` and `t` are ignored for `o` alone.
    """
    who_letters = clause[:len(clause) - len(clause.lstrip("ugoa"))]
    who = 0
    for letter in who_letters:
        who |= _WHO_BITS[letter]
    for op, perms in _ACTION.findall(clause[len(who_letters):]):
        if perms and perms in _CLASS_SHIFT:
            mode = _copy_class(mode, op, perms, who)
            continue
        reach = who or _EVERY_BIT
        bits = 0
        for letter in perms.replace("X", ""):
            if letter in "st" and who and not who & ~0o007:
                continue  # set-id and sticky bits have no meaning for "other"
            bits |= _PERM_BITS[letter] & (reach | (0o1000 if letter == "t" else 0))
        if "X" in perms and (op == "-" or is_dir or original & 0o111):
            bits |= 0o111 & reach
        if op == "=":
            mode &= ~((who or 0o6777) | (bits & 0o1000))
        mode = mode & ~bits if op == "-" else mode | bits
    return mode


def _copy_class(mode: int, op: str, source: str, who: int) -> int:
    """`g=u`, `o+g`, `go-u`: the rwx of class `source` set, added or removed in the classes
    named (every class when none is)."""
    value = (mode >> _CLASS_SHIFT[source]) & 0o7
    for shift in _CLASS_SHIFT.values():
        if who and not who & (0o7 << shift):
            continue  # a class not named
        if op == "=":
            mode &= ~(0o7 << shift)
        mode = mode & ~(value << shift) if op == "-" else mode | (value << shift)
    return mode
