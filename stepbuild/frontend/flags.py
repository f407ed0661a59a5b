"""Instruction flags: `--name=value` words checked against what each instruction accepts.

The rules are BuildKit's `BFlags` (its tests are transcribed in the conformance suite's
`derived/bflags.json`): a bool flag takes `--f`, `--f=true` or `--f=false`; a string flag
needs `=` (`--f=` is the empty string); a list flag may repeat; anything undeclared is an
error. Also here: the `--mount` option language and Go durations (`--interval=1m30s`).
No I/O here; errors are `FlagError` with the offending flag, turned into `ParseError` by
the caller, which knows the location.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from enum import Enum

from stepbuild.frontend.instructions import Mount


class FlagError(ValueError):
    """A flag is unknown or its value is malformed. `flag` is the flag word as written."""

    def __init__(self, message: str, flag: str = "") -> None:
        super().__init__(message)
        self.flag = flag


class Kind(Enum):
    BOOL = "bool"
    STRING = "string"
    LIST = "list"  # a string flag that may be given more than once


@dataclass(frozen=True, slots=True)
class FlagValues:
    """The flags an instruction was given: name → bool, str or tuple of str."""

    values: dict[str, bool | str | tuple[str, ...]]

    def string(self, name: str) -> str | None:
        value = self.values.get(name)
        return value if isinstance(value, str) else None

    def boolean(self, name: str) -> bool:
        return self.values.get(name) is True

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.values.get(name, ())
        return value if isinstance(value, tuple) else ()

    @property
    def used(self) -> frozenset[str]:
        return frozenset(self.values)


def parse_flags(words: tuple[str, ...], declared: dict[str, Kind]) -> FlagValues:
    """Check flag words (`--name[=value]`) against `declared`. Raises FlagError."""
    values: dict[str, bool | str | tuple[str, ...]] = {}
    for word in words:
        if word == "--":
            break
        if not word.startswith("--"):
            raise FlagError(f"arguments must start with --: {word}", word)
        name, has_value, value = word[2:].partition("=")
        kind = declared.get(name)
        if kind is None:
            raise FlagError(f"unknown flag: --{name}", word)
        if kind is Kind.BOOL:
            values[name] = _bool_value(name, value if has_value else "true", word)
            continue
        if not has_value:
            raise FlagError(f"missing a value on flag: --{name}", word)
        if kind is Kind.LIST:
            previous = values.get(name, ())
            values[name] = (*previous, value) if isinstance(previous, tuple) else (value,)
        elif name in values:
            raise FlagError(f"duplicate flag specified: --{name}", word)
        else:
            values[name] = value
    return FlagValues(values)


def _bool_value(name: str, value: str, word: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", ""):
        return True
    if lowered == "false":
        return False
    raise FlagError(f"expecting boolean value for flag --{name}, not: {value}", word)


# --- RUN --mount ---------------------------------------------------------------------------

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
SHARING_MODES = ("shared", "private", "locked")

_MOUNT_KEYS = {
    "type": "type", "target": "target", "dst": "target", "destination": "target",
    "source": "source", "src": "source", "from": "from_", "id": "id", "sharing": "sharing",
    "mode": "mode", "uid": "uid", "gid": "gid", "readonly": "readonly", "ro": "readonly",
    "readwrite": "readwrite", "rw": "readwrite", "required": "required", "env": "env",
    "size": "size",
}
# Which options each mount type accepts (BuildKit's runmount.go, per type).
_ALLOWED = {
    "bind": {"target", "source", "from_", "readonly", "readwrite"},
    "cache": {"target", "source", "from_", "id", "sharing", "mode", "uid", "gid",
              "readonly", "readwrite"},
    "tmpfs": {"target", "size"},
    "secret": {"target", "id", "mode", "uid", "gid", "required", "env"},
    "ssh": {"target", "id", "mode", "uid", "gid", "required"},
}
_NUMERIC = {"mode": 8, "uid": 10, "gid": 10}


def parse_mount(text: str) -> Mount:
    """Parse the value of a `--mount` flag (`type=cache,target=/x,...`). Raises FlagError.

    Values holding `$` are kept as written for the planner to expand and re-parse; numeric
    options must then be literal numbers or variables.
    """
    word = f"--mount={text}"
    fields: dict[str, object] = {}
    for item in _split_csv(text, word):
        key, has_value, value = item.partition("=")
        name = _MOUNT_KEYS.get(key.strip().lower())
        if name is None:
            raise FlagError(f"unexpected key '{key}' in '{item}'", word)
        if name in ("readonly", "readwrite", "required"):
            flag = _bool_value(key, value if has_value else "true", word)
            fields["readonly" if name != "required" else "required"] = (
                flag if name != "readwrite" else not flag
            )
            continue
        if not has_value:
            raise FlagError(f"invalid field '{item}' must be a key=value pair", word)
        fields[name] = _mount_value(name, value, word)
    return _build_mount(fields, text, word)


def _build_mount(fields: dict[str, object], text: str, word: str) -> Mount:
    mount_type = str(fields.pop("type", "bind")).lower()
    if mount_type not in MOUNT_TYPES:
        raise FlagError(f"unsupported mount type {mount_type!r}", word)
    for name in fields:
        if name not in _ALLOWED[mount_type]:
            shown = name.rstrip("_")
            raise FlagError(f"option {shown!r} is not valid for a {mount_type} mount", word)
    sharing = fields.get("sharing")
    if sharing is not None and sharing not in SHARING_MODES and "$" not in str(sharing):
        raise FlagError(
            f"unsupported sharing value {sharing!r}: use shared, private or locked", word
        )
    if mount_type in ("bind", "cache", "tmpfs") and "target" not in fields:
        raise FlagError(f"a {mount_type} mount needs a target", word)
    if mount_type == "secret" and "id" not in fields and "target" not in fields:
        raise FlagError("a secret mount needs an id or a target", word)
    readonly = bool(fields.pop("readonly", mount_type == "bind"))
    return Mount(type=mount_type, readonly=readonly, raw=text, **fields)  # type: ignore[arg-type]


def _mount_value(name: str, value: str, word: str) -> object:
    if name == "type":
        return value.lower()
    if name in _NUMERIC:
        if "$" in value:
            return None  # expanded and re-parsed by the planner
        try:
            return int(value, _NUMERIC[name])
        except ValueError:
            raise FlagError(f"invalid {name} {value!r} in --mount", word) from None
    if name == "size":
        return parse_size(value, word)
    return value


def parse_size(value: str, word: str) -> int:
    """A tmpfs size: bytes, or with a k/m/g suffix (binary units, as Docker's units)."""
    match = re.fullmatch(r"(\d{1,30})\s*([kmgt]?)(?:i?b)?", value.strip().lower())
    if match is None:
        raise FlagError(f"invalid size {value!r}", word)
    number, unit = match.groups()
    scale: int = 1024 ** " kmgt".index(unit or " ")
    return int(number) * scale


def _split_csv(text: str, word: str) -> list[str]:
    # BuildKit reads the mount options with a CSV reader, so a value may be quoted
    # ("target=/a,b" needs quotes) and a field may not hold a bare quote.
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise FlagError(f"malformed --mount value: {exc}", word) from None
    return [item for item in (rows[0] if rows else []) if item != ""]


# --- durations -----------------------------------------------------------------------------

_UNITS_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
             "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str, flag: str) -> int:
    """A Go duration (`300ms`, `1.5h`, `2h45m`) in nanoseconds. Raises FlagError.

    Exact arithmetic (Fraction): Go refuses a duration beyond int64 nanoseconds, and so do we.
    """
    from fractions import Fraction

    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0
    position, total = 0, Fraction(0)
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        if match is None or len(match.group(1)) > _MAX_DIGITS:
            raise FlagError(f"time: invalid duration {text!r}", flag)
        total += Fraction(match.group(1)) * _UNITS_NS[match.group(2)]
        position = match.end()
    if not body or total > _MAX_DURATION_NS:
        raise FlagError(f"time: invalid duration {text!r}", flag)
    return -int(total) if text.startswith("-") else int(total)


_MAX_DURATION_NS = 2**63 - 1
_MAX_DIGITS = 40  # more digits than any int64 duration needs: refuse before converting
