"""The connect probe of a peer's client port judges the peer, not the prober's own loop."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from edgecache.cluster.view import _connects


async def test_a_peer_that_accepted_while_the_probers_loop_was_busy_is_not_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    connect = loop.sock_connect

    async def stalled(sock: socket.socket, address: tuple[str, int]) -> None:
        # The connect is sent, then the loop is blocked past the probe's deadline by other work: the kernel has
        # completed the handshake (the listener's backlog took it), and the loop sees it in the turn the deadline
        # passes.
        sent = asyncio.ensure_future(connect(sock, address))
        loop.call_soon(time.sleep, 0.2)
        await sent

    monkeypatch.setattr(loop, "sock_connect", stalled)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        for _ in range(2):
            assert await _connects(address, 0.05) is True


async def test_a_port_nobody_listens_on_fails_the_probe_twice() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        address = f"127.0.0.1:{s.getsockname()[1]}"
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            await _connects(address, 0.5)
