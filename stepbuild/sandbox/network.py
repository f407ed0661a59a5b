"""The private network of a build's RUN steps: one network namespace, reached through
slirp4netns, shared by every step of the build.

A step with network "private" joins this namespace (`SandboxSpec.netns`) instead of the
host's. It holds `lo` and `tap0` (10.0.2.100/24, default route via 10.0.2.2); slirp4netns, a
user-space TCP/IP stack running on the host side, turns the step's packets into ordinary
sockets of its own, so the step reaches what the builder reaches — except the host's
loopback (`--disable-host-loopback`: 10.0.2.2 does not lead to the host's 127.0.0.1) and
its abstract unix sockets (those belong to a network namespace). DNS goes to 10.0.2.3, which
slirp4netns forwards to the host's resolver.

Why slirp4netns: it gave connectivity in ~3 ms here, pasta in ~20 ms (issue 12), and it is
the stack rootless podman and buildah use, so the rootless builder can reuse this module.

Lifetime: `PrivateNetwork.namespace()` starts the stack on first use (a build with no
private RUN never pays for it); `close()` stops it. Nothing outlives the builder even after
kill -9: the namespace is bound onto a file in the builder's private mount namespace, which
dies with it, and slirp4netns exits when the pipe given as `--exit-fd` loses its writer — us.
The file's directory is named with the builder's owner tag (`store.tmp_dir`), so a dead
builder's leftover is reaped like any other temp dir.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import TYPE_CHECKING

from stepbuild.errors import SandboxError
from stepbuild.fs.userns import in_user_namespace

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable
    from pathlib import Path

__all__ = ["DNS_SERVER", "PrivateNetwork", "resolv_conf"]

SLIRP4NETNS = "slirp4netns"
TUN = "/dev/net/tun"  # slirp4netns makes its tap device through it
DNS_SERVER = "10.0.2.3"  # slirp4netns's built-in DNS forwarder
# 65520 as podman uses: fewer, larger packets make big downloads (apt-get) several times faster.
MTU = 65520
INSTALL_HINT = ("install slirp4netns (apt-get install slirp4netns), or choose --network none or"
                " --network host")


class PrivateNetwork:
    """One network namespace with outbound connectivity, started lazily, for a whole build.

    `make_dir` makes a fresh, empty, owner-tagged directory for the namespace file (the
    store's `tmp_dir`). Safe to use from several threads (stages build in parallel)."""

    def __init__(self, make_dir: Callable[[], Path]) -> None:
        self._make_dir = make_dir
        self._lock = threading.Lock()
        self._dir: Path | None = None
        self._stack: subprocess.Popen[bytes] | None = None
        self._exit_w = -1  # our end of slirp4netns's --exit-fd pipe

    def namespace(self) -> str:
        """The path of the namespace file a step joins (`SandboxSpec.netns`); starts the
        stack on first call. Raises SandboxError when it cannot be started."""
        with self._lock:
            if self._stack is None:
                self._start()
            assert self._dir is not None
            return str(self._dir / "netns")

    def close(self) -> None:
        """Stop the stack and remove the namespace; a no-op if it never started."""
        with self._lock:
            self._stop()

    def _start(self) -> None:
        _check_tun()
        self._dir = self._make_dir()
        path = self._dir / "netns"
        path.touch(mode=0o600)
        failed: list[OSError] = []
        # A thread of its own, left in the new namespace as it ends (linux.py says why).
        maker = threading.Thread(target=_make_namespace, args=(str(path), failed),
                                 name="stepbuild-netns")
        maker.start()
        maker.join()
        if failed:
            self._stop()
            raise SandboxError("create the build's network namespace",
                               failed[0].errno or 0) from None
        try:
            self._stack = self._spawn(path)
        except BaseException:
            self._stop()
            raise

    def _spawn(self, path: Path) -> subprocess.Popen[bytes]:
        """Start slirp4netns on the namespace and wait until it has configured tap0."""
        import subprocess

        ready_r, ready_w = os.pipe()
        exit_r, self._exit_w = os.pipe()
        # --enable-sandbox and --enable-seccomp: slirp4netns parses the step's packets (libslirp
        # has had memory-safety CVEs), so it runs in an empty root, without capabilities,
        # under its own seccomp filter — as podman runs it; a few ms, once per build.
        argv = [SLIRP4NETNS, "--configure", "--disable-host-loopback", f"--mtu={MTU}",
                "--enable-sandbox", "--enable-seccomp",
                f"--ready-fd={ready_w}", f"--exit-fd={exit_r}", "--netns-type=path",
                str(path), "tap0"]
        log = path.with_name("slirp4netns.log")
        try:
            with open(log, "wb") as out:
                stack = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, pass_fds=(ready_w, exit_r),
                                         start_new_session=True)  # ^C is ours to handle
        except FileNotFoundError:
            raise SandboxError("start slirp4netns for the RUN steps' private network: not"
                               " found", 0, hint=INSTALL_HINT) from None
        finally:
            os.close(ready_w)
            os.close(exit_r)
        try:
            ready = os.read(ready_r, 1)  # "1" once configured; EOF if it died
        finally:
            os.close(ready_r)
        if ready != b"1":
            stack.wait()
            said = [line for line in log.read_text(errors="replace").strip().splitlines()
                    if not line.startswith("WARNING:")]  # "seccomp is experimental": noise
            reason = f": {said[-1]}" if said else f" (exit status {stack.returncode})"
            raise SandboxError(f"start slirp4netns{reason}", 0, hint=INSTALL_HINT)
        return stack

    def _stop(self) -> None:
        from stepbuild.fs.trees import remove_tree
        from stepbuild.sandbox import linux  # noqa: TID251 -- network.py is sandbox/'s own

        if self._exit_w >= 0:
            os.close(self._exit_w)  # slirp4netns's cue to exit
            self._exit_w = -1
        if self._stack is not None:
            self._stack.wait()
            self._stack = None
        if self._dir is not None:
            with contextlib.suppress(OSError):  # never bound: the namespace was not made
                linux.umount(str(self._dir / "netns"))
            remove_tree(self._dir, best_effort=True)
            self._dir = None


def _check_tun() -> None:
    """In a user namespace, slirp4netns opens /dev/net/tun as the user stepbuild runs as
    (rootless) or as root of an unprivileged container (where the runtime gives no tun
    device unless asked): say so when it may not, rather than let it fail with a bare
    "Permission denied" (udev makes the device 0666; some hosts leave it 0600, and in a user
    namespace root's rights over it do not apply)."""
    if in_user_namespace() and not os.access(TUN, os.R_OK | os.W_OK):
        try:
            mode = f"mode {os.stat(TUN).st_mode & 0o7777:04o}"
        except OSError as exc:
            mode = (exc.strerror or "missing").lower()
        raise SandboxError(f"the private network of RUN steps in a user namespace needs {TUN}"
                           f" readable and writable by your user ({mode} here; udev makes it"
                           f" 0666, a container has it with --device {TUN})", 0,
                           hint=f"choose --network none or --network host, or chmod 0666 {TUN}"
                                f" (in a container: run it with --device {TUN})")


def _make_namespace(path: str, failed: list[OSError]) -> None:
    from stepbuild.sandbox import linux  # noqa: TID251 -- network.py is sandbox/'s own

    try:
        linux.bind_new_network_namespace(path)
    except OSError as exc:
        failed.append(exc)


def resolv_conf(host_resolv_conf: str) -> str:
    """The resolv.conf of a step on the private network: the host's search domains and
    options, with slirp4netns's forwarder as the only nameserver (the host's own, often on
    127.0.0.x, are out of reach from the namespace)."""
    kept = [line for line in host_resolv_conf.splitlines()
            if line.split()[:1] and line.split()[0] in ("search", "domain", "options")]
    return "".join(f"{line}\n" for line in [f"nameserver {DNS_SERVER}", *kept])
