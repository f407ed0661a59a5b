"""config/quantities.py: sizes and durations as flags and config.toml write them."""

from __future__ import annotations

import pytest

from stepbuild.config.quantities import parse_duration, parse_size


@pytest.mark.parametrize(("text", "size"), [
    ("1024", 1024), ("5GB", 5_000_000_000), ("5gb", 5_000_000_000), ("500MB", 500_000_000),
    ("1.5kB", 1500), ("2GiB", 2 << 30), ("3 MiB", 3 << 20), ("7B", 7), ("1TB", 10**12),
])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GB", "5XB", "-1GB", "5 G B", "1e9"])
def test_bad_sizes_name_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize(("text", "seconds"), [
    ("3600", 3600.0), ("30s", 30.0), ("90m", 5400.0), ("24h", 86400.0), ("7d", 604800.0),
    ("1h30m", 5400.0), ("2w", 1209600.0), ("0s", 0.0), ("1.5h", 5400.0),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "24x", "1h 30m", "-5m", "24hours"])
def test_bad_durations_name_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)
