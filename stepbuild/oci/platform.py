"""Platforms: `os/architecture[/variant]`, as OCI image indexes and `--platform` name them.

One value type, `Platform`, parsed and normalised once (containerd's `platforms.Normalize`
rules: lower case, `x86_64` → `amd64`, `aarch64` → `arm64`, the default variant of an
architecture implied: arm64 is arm64/v8, arm is arm/v7). Two platforms are the same when
their normal forms are; `str()` gives the short form people write (`linux/arm64`,
`linux/arm/v7`), which is also the form of the TARGETPLATFORM and BUILDPLATFORM ARGs.

`Platform.host()` is this machine's. `select(entries, wanted)` picks the index entry of a
platform by normal form.
"""

from __future__ import annotations

import platform as _machine
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from stepbuild.errors import UsageError

__all__ = ["Platform", "parse_platform", "parse_platforms", "select"]

# Other spellings of an architecture (and the variant they mean).
_ARCH_ALIASES = {"x86_64": ("amd64", ""), "x86-64": ("amd64", ""), "aarch64": ("arm64", ""),
                 "armhf": ("arm", "v7"), "armel": ("arm", "v6"), "i386": ("386", "")}
# The variant an architecture has when none is written.
_DEFAULT_VARIANTS = {"amd64": "v1", "arm64": "v8", "arm": "v7"}
_OSES = frozenset({"linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris",
                   "illumos", "aix", "android", "ios", "plan9", "js", "wasip1"})
# Architectures a bare word may name (containerd's known ones): `--platform=bogus` is an
# error, not linux/bogus. A written os/arch may name any architecture.
_KNOWN_ARCHES = frozenset({"amd64", "386", "arm", "arm64", "ppc64le", "ppc64", "s390x",
                           "riscv64", "mips", "mipsle", "mips64", "mips64le", "loong64",
                           "wasm", *_ARCH_ALIASES})
# uname -m of this machine → its OCI architecture.
_MACHINES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm",
             "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x",
             "riscv64": "riscv64"}


@dataclass(frozen=True, slots=True, order=True)
class Platform:
    """A normalised platform. `variant` holds the implied default too (arm64 → "v8"), so
    that equality is the normal forms' equality; `str()` leaves the implied one out."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def host(cls) -> Platform:
        machine = _machine.machine().lower()
        return cls.of("linux", _MACHINES.get(machine, machine))

    @classmethod
    def of(cls, os_name: str, architecture: str, variant: str = "") -> Platform:
        """The normal form of the parts given (aliases resolved, default variant filled)."""
        os_name, architecture, variant = os_name.lower(), architecture.lower(), variant.lower()
        architecture, alias_variant = _ARCH_ALIASES.get(architecture, (architecture, ""))
        variant = variant or alias_variant or _DEFAULT_VARIANTS.get(architecture, "")
        return cls(os_name, architecture, variant)

    @classmethod
    def from_oci(cls, obj: dict[str, Any]) -> Platform:
        """From an index entry's `platform` object or a config's os/architecture/variant."""
        return cls.of(str(obj.get("os") or ""), str(obj.get("architecture") or ""),
                      str(obj.get("variant") or ""))

    def to_oci(self) -> dict[str, str]:
        """The `platform` object of an index entry (the variant only where it is not the
        architecture's default, as BuildKit writes it: linux/arm64 has none, arm/v7 has)."""
        out = {"architecture": self.architecture, "os": self.os}
        if self.written_variant:
            out["variant"] = self.variant
        return out

    @property
    def written_variant(self) -> str:
        """The variant as people write it: "" where it is the architecture's default
        (arm64's v8, amd64's v1), except arm, whose variant is always written."""
        if self.architecture != "arm" and self.variant == _DEFAULT_VARIANTS.get(
                self.architecture):
            return ""
        return self.variant

    def __str__(self) -> str:
        variant = self.written_variant
        return f"{self.os}/{self.architecture}" + (f"/{variant}" if variant else "")

    def build_args(self, prefix: str) -> dict[str, str]:
        """The predefined ARGs `<prefix>PLATFORM`, `<prefix>OS`, `<prefix>ARCH` and
        `<prefix>VARIANT` (prefix TARGET or BUILD) for this platform, as BuildKit sets them."""
        return {f"{prefix}PLATFORM": str(self), f"{prefix}OS": self.os,
                f"{prefix}ARCH": self.architecture, f"{prefix}VARIANT": self.written_variant}


def parse_platform(text: str) -> Platform | None:
    """`os[/arch[/variant]]` or a bare `arch` (the os then linux; a known architecture
    only), normalised; a bare os takes this machine's architecture. None if it is no
    platform."""
    parts = text.strip().lower().split("/")
    if len(parts) > 3 or not all(parts):
        return None
    if len(parts) == 1:
        if parts[0] in _OSES:
            return Platform.of(parts[0], Platform.host().architecture)
        if parts[0] not in _KNOWN_ARCHES:
            return None
        parts = ["linux", parts[0]]
    if parts[0] not in _OSES:
        return None
    return Platform.of(parts[0], parts[1], parts[2] if len(parts) == 3 else "")


def parse_platforms(values: Iterable[str], flag: str = "--platform") -> tuple[Platform, ...]:
    """`--platform` values (repeatable, each comma-separated), in order, without repeats;
    UsageError naming the flag for anything that is no platform."""
    found: list[Platform] = []
    for value in values:
        for part in value.split(","):
            parsed = parse_platform(part) if part.strip() else None
            if parsed is None:
                raise UsageError(f"{flag} {part.strip()!r}: not a platform",
                                 hint="os/arch[/variant], e.g. linux/amd64,linux/arm64")
            if parsed not in found:
                found.append(parsed)
    return tuple(found)


def select(entries: Sequence[Any], wanted: Platform) -> Any | None:
    """The first of `entries` (objects with a `.platform` dict, e.g. index descriptors)
    whose platform has `wanted`'s normal form (an unstated variant is the default one: an
    `arm` entry is arm/v7, an `arm64` entry arm64/v8). None if none has."""
    for entry in entries:
        stated = getattr(entry, "platform", None)
        if stated and Platform.from_oci(stated) == wanted:
            return entry
    return None
