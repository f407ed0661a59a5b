"""progress.units.human_size: byte counts in the progress lines, `images` and `prune`."""

from __future__ import annotations

import pytest

from stepbuild.progress import human_size


@pytest.mark.parametrize(("n", "shown"), [
    (0, "0B"), (999, "999B"), (1000, "1.0kB"), (3_400_000, "3.4MB"),
    (52_428_800, "52.4MB"), (2_500_000_000, "2.5GB"), (7_000_000_000_000, "7000.0GB"),
])
def test_human_size(n: int, shown: str) -> None:
    assert human_size(n) == shown
