"""Blobs moved in parallel: a thread pool whose results come back in order (push, pull)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import Future

__all__ = ["DEFAULT_JOBS", "in_order", "worker_pool"]

DEFAULT_JOBS = 4  # blobs transferred at once (docker: 3 up, 3 down)

_T = TypeVar("_T")
_R = TypeVar("_R")


@contextmanager
def worker_pool(func: Callable[[_T], _R], items: list[_T], jobs: int, *,
                unused: Callable[[_R], None] | None = None) -> Iterator[Iterator[_R]]:
    """`func` over `items` in up to `jobs` threads; yields the results in order, as each is
    ready. On an error (in a worker, or in the caller's loop) the pending items are
    cancelled and the running ones awaited before it propagates; `unused` is then given
    each finished result the caller never took (to delete its temp files)."""
    if not items:
        yield iter(())
        return
    from concurrent.futures import ThreadPoolExecutor  # only when there is something to move

    pool = ThreadPoolExecutor(max(1, min(jobs, len(items))), thread_name_prefix="transfer")
    futures: list[Future[_R]] = [pool.submit(func, item) for item in items]
    taken = 0

    def results() -> Iterator[_R]:
        nonlocal taken
        for future in futures:
            result = future.result()
            taken += 1
            yield result

    try:
        yield results()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for future in futures[taken:]:
            if unused is not None and not future.cancelled() and future.exception() is None:
                unused(future.result())


def in_order(func: Callable[[_T], _R], items: list[_T], jobs: int) -> list[_R]:
    """`func` over `items` in up to `jobs` threads; every result, in the order of `items`."""
    with worker_pool(func, items, jobs) as results:
        return list(results)
