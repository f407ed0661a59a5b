"""Sizes and durations as people write them in flags and config.toml: `5GB`, `512MiB`, `7d`.

Sizes: a number (decimals allowed) and a unit, decimal `B kB KB MB GB TB` (as `du` and
`images` print them: progress/units.py) or binary `KiB MiB GiB TiB`; a bare number is bytes.
Durations: one or more `<number><unit>` with units `s m h d w` (`90m`, `1h30m`, `7d`), or a
bare number of seconds. Both raise ValueError with the text in the message; the caller names
the flag or key.
"""

from __future__ import annotations

import re

__all__ = ["parse_duration", "parse_size"]

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhdw])")


def parse_size(text: str) -> int:
    """Bytes in `text` (`5GB` → 5_000_000_000, `1.5GiB`, `1024`)."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 500MB, 5GB, 2GiB)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str) -> float:
    """Seconds in `text` (`24h` → 86400.0, `1h30m`, `7d`, `3600`)."""
    stripped = text.strip()
    if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", stripped):
        return float(stripped)
    parts = _DURATION_PART.findall(stripped)
    if not stripped or "".join(n + u for n, u in parts) != stripped:
        raise ValueError(f"{text!r} is not a duration (e.g. 30m, 24h, 7d, 1h30m)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
