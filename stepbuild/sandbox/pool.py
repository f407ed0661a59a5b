"""A build's sandbox: `run` as `sandbox.run` does, with the next step's child made ahead.

Moving a process into a cgroup v1 hierarchy waits for an RCU grace period when no move
happened just before (cgroup_threadgroup_rwsem): ~9 ms per RUN step on this project's CI
machine, more than the rest of the sandbox's start. A pool pays it off the step's path: when
a step takes its child, a thread makes the next one — forked by the fork server, in a cgroup
of its own with the same limits, waiting for its plan — while this step runs, is captured
and committed. A step finding none ready (the first, a second stage's at the same time, a
spare that failed) makes its own, as `sandbox.run` does.

    pool = Pool()
    try:
        result = pool.run(spec, on_output=...)  # any number of steps, from any threads
    finally:
        pool.close()  # a spare left is ended, its cgroup removed, the pool's fork server too

Only the builder uses one (`build/execute.py`): between two builds, or for `stepbuild run`,
a spare would be a process and a cgroup lying about for nothing.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

from stepbuild.errors import SandboxError
from stepbuild.sandbox import ReadyChild, ready_child
from stepbuild.sandbox import run as run_in_sandbox
from stepbuild.sandbox.spawn import ForkServer

if TYPE_CHECKING:
    from collections.abc import Callable

    from stepbuild.sandbox import RunResult
    from stepbuild.sandbox.cgroups import StepCgroup
    from stepbuild.sandbox.limits import Limits
    from stepbuild.sandbox.spec import SandboxSpec

Key = tuple[str, "Limits"]  # a spare serves steps of the same child module and limits


class Pool:
    """`run` for a build's steps, one child kept ready per (module, limits)."""

    def __init__(self) -> None:
        self._spares: dict[Key, ReadyChild] = {}
        self._makers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        self._server = ForkServer()  # the build's own: ended with it (an embedding caller
        # that builds in-process keeps no process or socket of ours after the build)

    def run(self, spec: SandboxSpec, on_output: Callable[[bytes], None] | None = None,
            cancel: threading.Event | None = None) -> RunResult:
        return run_in_sandbox(spec, on_output, cancel, ready=self._ready, retire=self._retire)

    def settle(self) -> None:
        """Wait for the pool's threads: the spares being made, the cgroups being removed."""
        with self._lock:
            makers, self._makers = self._makers, []
        for maker in makers:
            maker.join()

    def close(self) -> None:
        """Wait for the spares being made, then end every spare. Idempotent."""
        with self._lock:
            self._closed = True
        self.settle()
        with self._lock:
            spares, self._spares = list(self._spares.values()), {}
        for spare in spares:
            spare.discard()
        self._server.close()

    def _ready(self, module: str, limits: Limits) -> ReadyChild:
        key = (module, limits)
        with self._lock:
            spare = self._spares.pop(key, None)
            closed = self._closed
        if not closed:
            self._start(lambda: self._make(key))
        return spare if spare is not None else ready_child(module, limits, self._server)

    def _retire(self, cgroup: StepCgroup) -> None:
        """Remove a finished step's cgroup in a thread (an rmdir of a v1 memory cgroup takes
        ~3 ms here); `close` waits for it. Its tasks are gone: the step's PID 1 has exited."""
        self._start(lambda: _remove(cgroup))

    def _start(self, work: Callable[[], None]) -> None:
        """`work` in a thread `close` waits for; at once once closed."""
        with self._lock:
            if not self._closed:
                thread = threading.Thread(target=work, daemon=True, name="sandbox-pool")
                self._makers = [t for t in self._makers if t.is_alive()] + [thread]
                thread.start()
                return
        work()

    def _make(self, key: Key) -> None:
        try:
            spare = ready_child(*key, self._server)
        except Exception:  # noqa: BLE001 -- the step that needs one makes its own and says why
            return
        with self._lock:
            keep = not self._closed and key not in self._spares
            if keep:
                self._spares[key] = spare
        if not keep:
            spare.discard()


def _remove(cgroup: StepCgroup) -> None:
    # SandboxError: still busy after a second; the next step under that parent reaps it
    with contextlib.suppress(SandboxError):
        cgroup.remove()
