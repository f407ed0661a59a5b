"""Byte counts as people read them (progress lines, `images`, `prune`)."""

from __future__ import annotations

__all__ = ["human_size"]


def human_size(n: int) -> str:
    """A byte count as people read it (decimal units, as docker shows them): 512B, 3.4MB."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{n}B"
