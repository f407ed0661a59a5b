"""The builder's side of the fork server (`forkserver.py`): start it once, ask it for children.

    child = DEFAULT.start_child("child", plan_r, status_w, out_w)  # waiting for its plan
    ...                                            # join its cgroup, send the plan, read output
    wait_status = child.wait()                     # raw, as os.waitpid gives; child.kill() too

One server (`DEFAULT`, or a build's own: `pool.Pool`) serves every thread of the builder;
it is started on first use, again after a fork of the builder (a forked builder must not
share its parent's server) or when it has died. Each request carries its own reply socket,
so threads never read each other's replies.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass

from stepbuild.errors import SandboxError

_BOOT = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
         "import forkserver; forkserver.serve()")


@dataclass(slots=True)
class Child:
    """One sandbox child, forked by the server: its pid, a pidfd of ours, its reply socket.
    `status` is its wait status once `wait` has it."""

    pid: int
    pidfd: int
    reply: socket.socket
    status: int | None = None

    def kill(self) -> None:
        """SIGKILL it, unless already waited for; through the pidfd, so a recycled pid is
        never hit."""
        if self.reply.fileno() != -1:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def wait(self) -> int:
        """Its wait status (os.waitpid's) once it has exited; then closes what we hold.
        Raises SandboxError if the server died first (which killed the child)."""
        if self.reply.fileno() != -1:
            try:
                answer = self.reply.recv(64)
            finally:
                self.reply.close()
                os.close(self.pidfd)
            if answer.startswith(b"exit "):
                self.status = int(answer[5:])
        if self.status is None:
            raise SandboxError("the sandbox fork server exited during a step", 0)
        return self.status


@dataclass(slots=True)
class _Server:
    pid: int
    owner: int  # the builder process that started it
    control: socket.socket


class ForkServer:
    """One fork server, started on first use, started again after a fork of the builder or
    when it has died; `close` ends it, and with it any child it still has. Thread-safe."""

    def __init__(self) -> None:
        self._server: _Server | None = None
        self._lock = threading.Lock()

    def start_child(self, module: str, plan_r: int, status_w: int, out_w: int) -> Child:
        """A new sandbox child running `module` (`child`, or `chroot_child` for chroot
        isolation) with child.py's fd layout, in the calling thread's mount namespace.
        Raises SandboxError if the server cannot be started or cannot fork."""
        mnt = os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for attempt in range(2):
                server = self._running(restart=attempt > 0)
                reply, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                try:
                    fds = array.array("i", [plan_r, status_w, out_w, theirs.fileno(), mnt])
                    server.control.sendmsg([b"run " + module.encode()],
                                           [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                except (BrokenPipeError, ConnectionResetError):
                    reply.close()
                    continue  # the server died (killed by someone): start another, once
                finally:
                    theirs.close()
                return _answer(reply)
        finally:
            os.close(mnt)
        raise SandboxError("the sandbox fork server keeps exiting", 0)

    def close(self) -> None:
        """End the server (it kills its children) and reap it. Idempotent."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            _retire(server, wait=True)

    @property
    def pid(self) -> int | None:
        """The running server's pid, if one was started."""
        server = self._server
        return server.pid if server is not None else None

    def _running(self, *, restart: bool) -> _Server:
        with self._lock:
            if self._server is not None and (restart or self._server.owner != os.getpid()):
                _retire(self._server)
                self._server = None
            if self._server is None:
                self._server = _start()
            return self._server


DEFAULT = ForkServer()  # sandbox.run's own, for the life of the process (`pool.Pool` has one)


def _answer(reply: socket.socket) -> Child:
    data, ancdata, _, _ = reply.recvmsg(64, socket.CMSG_SPACE(array.array("i").itemsize))
    if data.startswith(b"pid "):
        pidfd = array.array("i", ancdata[0][2][:4])[0]
        return Child(int(data[4:]), pidfd, reply)
    reply.close()
    if data.startswith(b"error "):
        raise SandboxError("fork the sandbox child", int(data[6:]))
    raise SandboxError("the sandbox fork server exited", 0)


def _start() -> _Server:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # above fd 4, so that the dup2 to 3 below always clears close-on-exec
    high = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD_CLOEXEC, 5)
    theirs.close()
    try:
        # -I -S and an empty environment, as the children had when each was its own process;
        # stdout and stderr go nowhere: the server reports through its sockets alone
        argv = [sys.executable, "-I", "-S", "-c", _BOOT]
        actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = [
            (os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
        actions.append((os.POSIX_SPAWN_DUP2, high, 3))
        pid = os.posix_spawn(sys.executable, argv, {}, file_actions=actions)
    except OSError as e:
        ours.close()
        raise SandboxError("start the sandbox fork server", e.errno or 0) from None
    finally:
        os.close(high)
    ours.setblocking(True)
    fcntl.fcntl(ours.fileno(), fcntl.F_SETFD, fcntl.FD_CLOEXEC)
    return _Server(pid, os.getpid(), ours)


def _retire(server: _Server, *, wait: bool = False) -> None:
    """Close our end (the server then kills its children and exits) and reap it if it was
    ours (`wait`: until it has exited); a forked builder's copy of its parent's server is
    only closed."""
    server.control.close()
    if server.owner == os.getpid():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(server.pid, 0 if wait else os.WNOHANG)
