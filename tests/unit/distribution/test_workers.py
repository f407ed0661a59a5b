"""workers.py: results in the order of the items, whatever order the threads finish in; on
an error the finished results nobody took are handed to `unused`."""

from __future__ import annotations

import threading
import time

import pytest

from stepbuild.distribution.workers import in_order, worker_pool


def test_results_come_in_the_order_of_the_items() -> None:
    def slow_first(n: int) -> int:
        time.sleep(0.05 if n == 0 else 0)
        return n * 10

    assert in_order(slow_first, [0, 1, 2, 3], jobs=4) == [0, 10, 20, 30]


def test_no_items_start_no_threads() -> None:
    before = threading.active_count()
    assert in_order(lambda n: n, [], jobs=4) == []
    assert threading.active_count() == before


def test_results_not_taken_after_an_error_go_to_unused() -> None:
    finished = threading.Semaphore(0)

    def work(n: int) -> int:
        if n == 1:  # done last: 2 and 3 are finished when the caller fails on 1
            finished.acquire()
            finished.acquire()
        else:
            finished.release()
        return n

    unused: list[int] = []
    with pytest.raises(RuntimeError, match="stop"), \
            worker_pool(work, [1, 2, 3], jobs=3, unused=unused.append) as results:
        for result in results:
            if result == 1:
                raise RuntimeError("stop")
    assert unused == [2, 3]


def test_a_worker_error_reaches_the_caller() -> None:
    def fail_on_two(n: int) -> int:
        if n == 2:
            raise ValueError("two")
        return n

    with pytest.raises(ValueError, match="two"):
        in_order(fail_on_two, [1, 2, 3], jobs=2)
