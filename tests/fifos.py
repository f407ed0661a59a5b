"""Helpers for tests that a reader never blocks on a FIFO: a call that must return promptly,
and letting go of a reader that a regression left blocked."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def promptly(call: Callable[[], T]) -> T:
    """call(), which must return (or raise) within 5 s. A hung thread is left behind (a
    blocked open cannot be interrupted): the test that made the FIFO unblocks it with
    `release`."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(call).result(timeout=5)
    finally:
        pool.shutdown(wait=False)


def release(fifo: Path) -> None:
    """Open `fifo` for writing once, so a reader blocked in open(2) goes on; with no reader
    this open fails (ENXIO) and there is nothing to do."""
    with suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
