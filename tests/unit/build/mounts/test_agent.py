"""The ssh agent forwarder: both directions, socket paths beyond sun_path's limit."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from stepbuild.build.mounts import agent
from stepbuild.build.mounts.agent import AgentProxy


def test_agent_proxy_forwards_both_ways(tmp_path: Path) -> None:
    upstream = tmp_path / ("u" * 90) / "agent.sock"  # beyond sun_path's 108 bytes
    upstream.parent.mkdir()
    server = socket.socket(socket.AF_UNIX)
    agent._at_short_path(upstream, server.bind)
    server.listen(1)

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data.upper())

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    path = tmp_path / ("p" * 90) / "proxy.sock"
    path.parent.mkdir()
    proxy = AgentProxy(str(upstream), path, mode=0o600, uid=os.getuid(), gid=os.getgid())
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        client = socket.socket(socket.AF_UNIX)
        agent._at_short_path(path, client.connect)
        client.sendall(b"ping")
        assert client.recv(1024) == b"PING"
        client.close()
    finally:
        proxy.close()
        server.close()
    thread.join(timeout=5)
