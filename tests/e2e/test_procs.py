"""free_port: a port whose last server left connections in TIME_WAIT is handed out again.

A three-node cluster test leaves hundreds of connections in TIME_WAIT on its ports (health checks every 0.1 s), for
a minute. Every server the suite starts binds with SO_REUSEADDR (the node's listeners, aiohttp's sites), so such a
port serves again at once; a check that binds without it skipped the port, and runs given a hundred ports each
(EDGECACHE_TEST_PORTS) ran out of them.
"""

from __future__ import annotations

import socket

import pytest

from tests.e2e import procs


def _time_wait_on(port: int) -> None:
    """A connection to `port` that the server side closes first: the server's end waits in TIME_WAIT."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server closes first
        assert client.recv(1) == b""
        client.close()


def test_a_port_left_in_time_wait_is_given_again(monkeypatch: pytest.MonkeyPatch) -> None:
    port = procs.free_port()
    _time_wait_on(port)
    monkeypatch.setenv("EDGECACHE_TEST_PORTS", f"{port}-{port}")
    assert procs.free_port() == port


def test_a_port_a_server_listens_on_is_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    port = procs.free_port()
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        monkeypatch.setenv("EDGECACHE_TEST_PORTS", f"{port}-{port}")
        with pytest.raises(RuntimeError, match="no free port"):
            procs.free_port()
