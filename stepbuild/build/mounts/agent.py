"""The ssh agent forwarder of `RUN --mount=type=ssh`: a socket of the step's own, served
from threads of the builder and forwarded to the agent socket given with `--ssh`."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


class AgentProxy:
    """A unix socket at `path` (owner uid:gid, `mode`) whose connections are forwarded to the
    agent socket `upstream`, from threads of the builder, until `close`.

    The step gets a socket of its own, as BuildKit's (forwarded to the client over its
    session): the owner and mode asked for apply without changing the user's agent socket,
    and the step can reach nothing but the agent. Socket paths longer than sun_path's 108
    bytes are reached through /proc/self/fd/N/NAME of their directory.
    """

    def __init__(self, upstream: str, path: Path, *, mode: int, uid: int, gid: int) -> None:
        import socket

        self.upstream = upstream
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _at_short_path(path, self.listener.bind)
            os.chown(path, uid, gid, follow_symlinks=False)
            os.chmod(path, mode)
            self.listener.listen(16)
        except BaseException:
            self.listener.close()
            raise
        self._stop_r, self._stop_w = socket.socketpair()
        self._lock = threading.Lock()
        self._open: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._serve, name="ssh-agent-proxy", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import selectors

        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            selector.register(self._stop_r, selectors.EVENT_READ)
            while True:
                ready = [key.fileobj for key, _ in selector.select()]
                if self._stop_r in ready:
                    return
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    continue
                self._forward(conn)

    def _forward(self, conn: Any) -> None:
        import socket

        agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _at_short_path(Path(self.upstream), agent.connect)
        except OSError:
            agent.close()
            conn.close()  # the agent is gone: the client sees EOF, as with a dead agent
            return
        with self._lock:
            self._open += [conn, agent]
            for a, b in ((conn, agent), (agent, conn)):
                thread = threading.Thread(target=_pump, args=(a, b), daemon=True)
                self._threads.append(thread)
                thread.start()

    def close(self, drain: float = 2.0) -> None:
        """Stop accepting; let what the (finished) step sent reach the agent and the agent
        close, for up to `drain` seconds; then cut what is left."""
        import socket
        import time

        self._stop_w.send(b"x")
        self._thread.join()
        deadline = time.monotonic() + drain
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            for sock in self._open:
                with _suppressed():
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=1)
        for sock in (*self._open, self.listener, self._stop_r, self._stop_w):
            sock.close()


def _pump(source: Any, sink: Any) -> None:
    import socket

    with _suppressed():
        while data := source.recv(65536):
            sink.sendall(data)
    with _suppressed():
        sink.shutdown(socket.SHUT_WR)


class _suppressed:
    """`with _suppressed():` ignores OSError (a peer gone away)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, *rest: Any) -> bool:
        return kind is not None and issubclass(kind, OSError)


def _at_short_path(path: Path, call: Callable[[str], None]) -> None:
    """`call(path)` for bind/connect, through an fd of the directory if the path is long."""
    if len(os.fsencode(path)) < 100:
        call(str(path))
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        call(f"/proc/self/fd/{fd}/{path.name}")
    finally:
        os.close(fd)
