"""The network of RUN steps and `stepbuild run` (docs/security.md): by default a private
namespace reached through slirp4netns — the internet and the host's other addresses yes, the
host's loopback and abstract unix sockets no; the host's own only when asked for."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.builds import (
    PROJECT,
    Stepbuild,
    assert_clear_error,
    base_image,
    write_context,
)

# TEST-NET-1 (RFC 5737), never routed: safe to add to lo for the module's duration. Not the
# address test_build_registry_flags uses, so that the two modules never remove each other's.
OFF_LOOPBACK = "192.0.2.77"
ABSTRACT_NAME = f"stepbuild-netns-test-{os.getpid()}"


@pytest.fixture(scope="module")
def sb(tmp_path_factory: pytest.TempPathFactory) -> Stepbuild:
    work = tmp_path_factory.mktemp("network")
    stepbuild = Stepbuild(work / "store")
    base_image(stepbuild, work)
    return stepbuild


def _serve(listener: socket.socket, greeting: bytes) -> None:
    """Answer every connection with `greeting`, until the listener is closed."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.sendall(greeting)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    """TCP servers on the host's 127.0.0.1 and on OFF_LOOPBACK, each answering its name, and
    a listening abstract unix socket: {"loopback": "127.0.0.1 PORT", "other": ADDR PORT}."""
    subprocess.run(["ip", "addr", "replace", f"{OFF_LOOPBACK}/32", "dev", "lo"], check=True)
    listeners, found = [], {}
    try:
        for name, address in (("loopback", "127.0.0.1"), ("other", OFF_LOOPBACK)):
            listener = socket.create_server((address, 0))
            listeners.append(listener)
            threading.Thread(target=_serve, args=(listener, f"{name}\n".encode()),
                             daemon=True).start()
            found[name] = f"{address} {listener.getsockname()[1]}"
        abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listeners.append(abstract)
        abstract.bind("\0" + ABSTRACT_NAME)
        abstract.listen()
        yield found
    finally:
        for listener in listeners:
            listener.close()
        subprocess.run(["ip", "addr", "del", f"{OFF_LOOPBACK}/32", "dev", "lo"], check=False)


def _probe_script(servers: dict[str, str]) -> str:
    """Shell text printing what the step reaches: one line per server (its answer or
    `no NAME`), then `abstract` when the host's abstract socket is listed in the step's
    /proc/net/unix — abstract sockets belong to a network namespace, so a step can connect
    to exactly those it lists."""
    probes = [f"(nc -w 2 {servers[name]} </dev/null 2>/dev/null || echo no {name})"
              for name in ("loopback", "other")]
    probes.append(f"(grep -q '@{ABSTRACT_NAME}$' /proc/net/unix && echo abstract || true)")
    return "; ".join(probes)


def test_default_network_reaches_other_host_addresses_not_loopback(
        sb: Stepbuild, servers: dict[str, str], tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", f"FROM base\nRUN ({_probe_script(servers)}) > /out\n")
    sb.build(context, "-t", "private")
    assert sb.run("private", "cat", "/out") == "no loopback\nother\n"


def test_default_network_is_ipv4_only_and_the_hosts_ipv6_loopback_is_not_reached(
        sb: Stepbuild, tmp_path: Path) -> None:
    """As docker's default bridge: no global IPv6 address, only the namespace's own ::1 and
    tap0's link-local one, so neither the host's [::1] services nor IPv6 destinations are
    reachable."""
    listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    threading.Thread(target=_serve, args=(listener, b"v6 loopback\n"), daemon=True).start()
    port = listener.getsockname()[1]
    try:
        probe = (f"(nc -w 2 ::1 {port} </dev/null 2>/dev/null || echo no v6 loopback); "
                 "awk '{print $6, $4}' /proc/net/if_inet6 | sort")
        context = write_context(tmp_path / "ctx", f"FROM base\nRUN ({probe}) > /out\n")
        sb.build(context, "-t", "v6")
        # scope 10 is host (::1), 20 link-local (fe80::, tap0's own): no global address
        assert sb.run("v6", "cat", "/out") == "no v6 loopback\nlo 10\ntap0 20\n"
        # the probe can succeed: on the host's network it reaches the server
        reached = sb("run", "--network", "host", "v6", "sh", "-c", probe.split(";")[0]).stdout
        assert reached == "v6 loopback\n"
    finally:
        listener.close()


def test_host_network_is_an_explicit_choice(sb: Stepbuild, servers: dict[str, str],
                                            tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", f"FROM base\nRUN ({_probe_script(servers)}) > /out\n")
    sb.build(context, "-t", "host", "--network", "host")
    assert sb.run("host", "cat", "/out") == "loopback\nother\nabstract\n"


def test_run_network_host_needs_the_entitlement(sb: Stepbuild, servers: dict[str, str],
                                                tmp_path: Path) -> None:
    stepfile = f"FROM base\nRUN --network=host ({_probe_script(servers)}) > /out\n"
    context = write_context(tmp_path / "ctx", stepfile)
    refused = sb.build(context, "-t", "asked", check=False)
    assert_clear_error(refused, 2, "Stepfile:2:1: RUN --network=host needs the network.host"
                       " entitlement", "--allow network.host")
    sb.build(context, "-t", "asked", "--allow", "network.host")
    assert sb.run("asked", "cat", "/out") == "loopback\nother\nabstract\n"
    assert sb("check").stdout == "store is consistent\n"


def test_stepbuild_run_gets_the_private_network_too(sb: Stepbuild, servers: dict[str, str]
                                                    ) -> None:
    probe = _probe_script(servers)
    assert sb.run("base", "sh", "-c", probe) == "no loopback\nother\n"
    host = sb("run", "--network", "host", "base", "sh", "-c", probe).stdout
    assert host == "loopback\nother\nabstract\n"


def test_dns_goes_to_the_stacks_resolver(sb: Stepbuild, tmp_path: Path) -> None:
    # deb.debian.org is what the java demo's apt-get needs; nothing else resolves here.
    context = write_context(tmp_path / "ctx", (
        "FROM base\nRUN grep nameserver /etc/resolv.conf > /out &&"
        " nslookup deb.debian.org | grep -c '^Address' >> /out\n"))
    sb.build(context, "-t", "dns")
    nameserver, addresses = sb.run("dns", "cat", "/out").splitlines()
    assert nameserver == "nameserver 10.0.2.3" and int(addresses) >= 1


def test_every_step_shares_one_stack_and_none_outlives_the_build(sb: Stepbuild,
                                                                  tmp_path: Path) -> None:
    # tap0's MAC address is the namespace's: the same in every step of a build.
    context = write_context(tmp_path / "ctx", (
        "FROM base\nRUN cat /sys/class/net/tap0/address > /one\n"
        "RUN cat /sys/class/net/tap0/address > /two\n"))
    sb.build(context, "-t", "shared")
    assert sb.run("shared", "cat", "/one") == sb.run("shared", "cat", "/two")
    assert _stacks_of(sb) == []
    assert not [p for p in (sb.root / "tmp").iterdir() if p.name.startswith("net-")]


def _stacks_of(sb: Stepbuild) -> list[int]:
    """The pids of the slirp4netns processes serving builds of this store."""
    found = subprocess.run(["pgrep", "-f", f"slirp4netns .*{sb.root}/"], capture_output=True,
                           text=True)
    return [int(pid) for pid in found.stdout.split()]


def _build_in_a_step(sb: Stepbuild, tmp_path: Path) -> subprocess.Popen[str]:
    """A build whose RUN (on the private network) says it started, then waits for ever."""
    context = write_context(tmp_path / "slow", "FROM base\nRUN echo step-is-running"
                            " && sleep 1000\n")
    env = {**os.environ, "STEPBUILD_ROOT": str(sb.root), "PYTHONPATH": str(PROJECT)}
    build = subprocess.Popen([sys.executable, "-m", "stepbuild", "build", "--no-cache",
                              str(context)], env=env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    assert build.stderr is not None
    for line in build.stderr:
        if "step-is-running" in line and "echo" not in line:
            return build
    build.wait()
    pytest.fail(f"the build ended before its step ran: {build.returncode}")


def _gone(pid: int) -> bool:
    """Whether process `pid` exits within 30 s (it is not our child: poll /proc)."""
    for _ in range(300):
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_the_stack_dies_with_a_killed_build(sb: Stepbuild, tmp_path: Path, how: int) -> None:
    build = _build_in_a_step(sb, tmp_path)
    [stack] = _stacks_of(sb)
    build.send_signal(how)
    build.communicate()
    assert _gone(stack)  # SIGKILL: its --exit-fd lost its writer; SIGTERM: we stopped it
    if how == signal.SIGTERM:
        assert not list((sb.root / "tmp").iterdir())
    else:  # the namespace file's dir is the dead builder's work: the next build reaps it
        sb.build(write_context(tmp_path / "next", "FROM base\nRUN true\n"), "--no-cache")
        assert not list((sb.root / "tmp").iterdir())


def test_without_slirp4netns_a_step_fails_clearly_and_leaves_nothing(sb: Stepbuild,
                                                                     tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", "FROM base\nRUN true\n")
    failed = sb("build", "--no-cache", str(context), check=False, env={"PATH": str(tmp_path)})
    assert_clear_error(failed, 1, "Stepfile:2:1: sandbox: start slirp4netns",
                       "apt-get install slirp4netns",
                       "--network none")
    assert not list((sb.root / "tmp").iterdir())
    assert sb("check").stdout == "store is consistent\n"
