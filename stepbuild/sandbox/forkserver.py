"""The fork server: one clean interpreter per builder that forks each step's sandbox child.

Starting `python -I -S` and importing `child` costs 12-15 ms, paid by every RUN step when each
child is a new interpreter. The builder instead starts this server once (`spawn.py`), and the
server forks a copy of itself per step, which runs `child.main` exactly as a fresh
interpreter would: the server imported only the stdlib and `child` (with `linux`), read
nothing from any rootfs, and holds no state a step could see. Forking it costs well under a
millisecond.

Protocol, over the SOCK_SEQPACKET socket on fd 3 (one message per request):

- request: data b"run MODULE" (`child`, or `chroot_child` for --isolation=chroot), fds
  [plan, status, output, reply, mount namespace] — the first three
  become the child's fds 3, 4 and 1/2 (child.py's contract); `reply` is a SOCK_SEQPACKET
  socket of the request's own; the child joins the mount namespace first (the builder's
  thread may be in another one than the server was started in).
- replies on `reply`: b"pid N" with the child's pidfd (the builder may kill it), then, when
  it has exited, b"exit STATUS" (the raw wait status); or b"error ERRNO" if fork failed.

The server exits when the builder's end of the control socket closes (the builder exited,
however it died), after killing its children; each child has PR_SET_PDEATHSIG on the server,
and each step's PID 1 on its child, so nothing of a step outlives the builder.
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import socket
import sys
from collections.abc import Callable

if __package__:
    from . import child, chroot_child, linux  # noqa: TID251 -- the server is linux.py's other user
else:  # top-level, as spawn.py starts it: skip importing the stepbuild packages
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import child  # type: ignore[import-not-found, no-redef]
    import chroot_child  # type: ignore[import-not-found, no-redef]
    import linux  # type: ignore[import-not-found, no-redef]

CHILDREN = {b"child": child.main, b"chroot_child": chroot_child.main}  # by isolation

CONTROL_FD = 3
_FDS_PER_REQUEST = 5
_HIGH_FD = 64  # received fds are moved up here before dup2 to 0-4, so none is overwritten


def serve() -> None:
    """Answer requests until the control socket closes; then kill the children and exit."""
    control = socket.socket(fileno=CONTROL_FD)
    own_mnt = os.stat("/proc/self/ns/mnt").st_ino
    running: Running = {}
    poller = select.poll()
    poller.register(control, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == control.fileno():
                if not _accept(control, own_mnt, running, poller):
                    _shut_down(running)
                    return
            else:
                poller.unregister(fd)
                _report_exit(*running.pop(fd))


Running = dict[int, tuple[int, int, socket.socket]]  # the server's pidfd → (pid, pidfd, reply)


def _accept(control: socket.socket, own_mnt: int, running: Running,
            poller: select.poll) -> bool:
    """Fork a child for one request; False when the builder has gone."""
    fds = array.array("i")
    data, ancdata, _, _ = control.recvmsg(16, socket.CMSG_SPACE(_FDS_PER_REQUEST * fds.itemsize))
    for _, _, cmsg_data in ancdata:
        fds.frombytes(cmsg_data[:len(cmsg_data) - len(cmsg_data) % fds.itemsize])
    if not data:
        return False
    verb, _, module = data.partition(b" ")
    if verb != b"run" or module not in CHILDREN or len(fds) != _FDS_PER_REQUEST:
        for fd in fds:
            os.close(fd)
        return True
    plan, status, output, reply_fd, mnt = fds
    reply = socket.socket(fileno=reply_fd)
    server = os.getpid()
    try:
        pid = os.fork()
    except OSError as e:
        reply.send(b"error %d" % (e.errno or 0))
        reply.close()
        pid = -1
    if pid == 0:
        _become_child(CHILDREN[module], server, (plan, status, output), mnt, own_mnt)
    for fd in (plan, status, output, mnt):
        os.close(fd)
    if pid > 0:
        pidfd = os.pidfd_open(pid)
        reply.sendmsg([b"pid %d" % pid], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          array.array("i", [pidfd]))])
        running[pidfd] = (pid, pidfd, reply)
        poller.register(pidfd, select.POLLIN)
    return True


def _become_child(main: Callable[[int], None], server: int, fds: tuple[int, int, int],
                  mnt: int, own_mnt: int) -> None:
    """In the forked child: the fd layout child.py expects, nothing else of the server's
    (other steps' sockets and pidfds), the requester's mount namespace; then `main`."""
    status = fds[1]
    try:
        if os.fstat(mnt).st_ino != own_mnt:
            linux.setns(mnt, linux.CLONE_NEWNS)
        plan, status, output = (os.dup2(fd, _HIGH_FD + i, inheritable=True)
                                for i, fd in enumerate(fds))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.dup2(plan, child.PLAN_FD)
        os.dup2(status, child.STATUS_FD)
        os.closerange(child.STATUS_FD + 1, os.sysconf("SC_OPEN_MAX"))
    except OSError as e:
        os.write(status, b"E\t%d\tstart the sandbox child\n" % (e.errno or 0))
        os._exit(127)
    main(server)


def _report_exit(pid: int, pidfd: int, reply: socket.socket) -> None:
    _, wait_status = os.waitpid(pid, 0)
    # OSError: the builder's thread gave up on this step (it killed it): nobody to tell
    with contextlib.suppress(OSError):
        reply.send(b"exit %d" % wait_status)
    reply.close()
    os.close(pidfd)


def _shut_down(running: Running) -> None:
    for pid, pidfd, reply in running.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, child.SIGKILL)
        os.waitpid(pid, 0)
        reply.close()
        os.close(pidfd)
