"""The sandbox fork server (sandbox/forkserver.py, sandbox/spawn.py) for real: steps forked
from one clean interpreter behave as steps started fresh — their own output and status from
parallel threads, the calling thread's mount namespace, a server that dies replaced, a
forked builder with a server of its own. (What a step may see and do is test_sandbox.py's.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stepbuild.errors import SandboxError
from stepbuild.sandbox import RunResult, SandboxSpec, host, run, spawn

from .builds import PROJECT

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("private_mount_ns")]


@dataclass(frozen=True)
class Root:
    merged: Path

    def sh(self, script: str, on_output: object = None) -> tuple[RunResult, str]:
        chunks: list[bytes] = []

        def collect(chunk: bytes) -> None:
            chunks.append(chunk)
            if callable(on_output):
                on_output(chunk)

        spec = SandboxSpec(rootfs=str(self.merged), argv=("sh", "-c", script),
                           env=("PATH=/bin",), cwd="/", network="host", seccomp="unconfined")
        result = run(spec, on_output=collect)
        return result, b"".join(chunks).decode()


@pytest.fixture
def root(tmp_path: Path, busybox_rootfs: Path) -> Iterator[Root]:
    with host.mounted(tmp_path, [busybox_rootfs]) as merged:
        yield Root(merged)


def _server_pid() -> int:
    pid = spawn.DEFAULT.pid
    assert pid is not None
    return pid


def _kill_server() -> int:
    pid = _server_pid()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").exists() and \
            Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return pid


def test_steps_share_one_server_whose_children_are_fresh(root: Root) -> None:
    root.sh("true")
    first = _server_pid()
    result, out = root.sh("echo $$; ls /proc/self/fd")
    assert result.exit_code == 0
    pid, *fds = out.split()
    assert pid == "1"  # PID 1 of its own namespace, as before
    assert sorted(fds) == ["0", "1", "2", "3"]  # 3: ls's own directory fd; nothing else
    assert _server_pid() == first


def test_parallel_threads_each_get_their_own_output_and_status(root: Root) -> None:
    results: dict[int, tuple[int, str]] = {}

    def step(n: int) -> None:
        result, out = root.sh(f"sleep 0.2; echo step {n}; exit {n}")
        results[n] = (result.exit_code, out)

    threads = [threading.Thread(target=step, args=(n,)) for n in range(1, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: (n, f"step {n}\n") for n in range(1, 7)}


def test_a_server_killed_between_steps_is_replaced(root: Root) -> None:
    root.sh("true")
    old = _kill_server()
    result, out = root.sh("echo again")
    assert (result.exit_code, out) == (0, "again\n")
    assert _server_pid() != old


def test_a_server_killed_during_a_step_fails_that_step_clearly(root: Root) -> None:
    root.sh("true")

    def kill_on_start(chunk: bytes) -> None:
        if b"started" in chunk:
            _kill_server()

    with pytest.raises(SandboxError, match="fork server exited during a step"):
        root.sh("echo started; sleep 30", on_output=kill_on_start)
    result, _ = root.sh("true")  # and the next step gets a new server
    assert result.exit_code == 0


def test_the_step_runs_in_the_calling_threads_mount_namespace(tmp_path: Path,
                                                              busybox_rootfs: Path) -> None:
    """The server was started in one mount namespace; a builder that then enters another
    and mounts its rootfs there must get a step that sees that rootfs."""
    script = f"""
import os
from stepbuild.sandbox import SandboxSpec, linux, run, spawn
def step(merged):
    out = []
    run(SandboxSpec(rootfs=merged, argv=("cat", "/marker"), env=("PATH=/bin",), cwd="/",
                    network="host", seccomp="unconfined"), on_output=out.append)
    return b"".join(out).decode().strip()
for n in ("one", "two"):
    linux.enter_private_mount_namespace()
    base = {str(tmp_path)!r} + "/" + n
    for d in ("lower", "up", "work", "merged"):
        os.makedirs(base + "/" + d)
    with open(base + "/lower/marker", "w") as f:
        f.write(n)
    linux.mount_overlay(base + "/merged", [base + "/lower", {str(busybox_rootfs)!r}],
                        base + "/up", base + "/work")
    print(step(base + "/merged"), spawn.DEFAULT.pid)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=PROJECT, env={"PYTHONPATH": str(PROJECT)}, timeout=60)
    assert done.returncode == 0, done.stderr
    (first, server1), (second, server2) = (line.split() for line in done.stdout.splitlines())
    assert (first, second) == ("one", "two")
    assert server1 == server2  # one server, started in the first namespace


def test_a_forked_builder_starts_a_server_of_its_own(root: Root) -> None:
    root.sh("true")
    parent_server = _server_pid()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the forked builder reports through the pipe
        try:
            result, out = root.sh("echo child")
            os.write(write_end, f"{result.exit_code} {out.strip()} {_server_pid()}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as answer:
        code, text, child_server = answer.read().split()
    os.waitpid(pid, 0)
    assert (code, text) == ("0", "child")
    assert int(child_server) != parent_server
    assert _server_pid() == parent_server
