"""A listener closed just after it accepted a connection closes that connection too.

On asyncio's own loop (the tests'; the CLI runs uvloop), Python 3.11 gives an accepted connection its transport
one or more turns after the accept, and refuses to attach it to a server closed meanwhile: the socket is then open
and known to no one (CPython gh-109564), until the garbage collector finds it. A peer's health check arriving as a
test's cluster stopped did it, and the suite failed on the ResourceWarning now and then. Each turn count between
the connect and the stop is tried: one of them is the turn that lost the socket.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from pathlib import Path

import pytest
from aiohttp import web

from edgecache.server import make_fast, make_server, open_node, start_listeners
from edgecache.sites import TCPListener
from tests.conftest import make_config
from tests.e2e.procs import free_port
from tests.origin import Origin

TURNS = range(6)


def closed(client: socket.socket) -> bool:
    """The server closed the connection: at once (FIN), or reset it (still in the backlog when the listener closed)."""
    client.settimeout(5)
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True


async def connect_then_wait(port: int, turns: int) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port))  # loopback: connected once the kernel has it queued
    for _ in range(turns):
        await asyncio.sleep(0)
    return client


@pytest.mark.parametrize("turns", TURNS)
async def test_the_admin_listener_closes_a_connection_it_accepted_as_it_stopped(turns: int) -> None:
    runner = web.AppRunner(web.Application(), shutdown_timeout=1.0)
    await runner.setup()
    port = free_port()
    await TCPListener(runner, "127.0.0.1", port).start()
    with await connect_then_wait(port, turns) as client:
        await runner.cleanup()
        assert closed(client)
    gc.collect()  # a socket left to the collector is reported as unraisable: the test fails


@pytest.mark.parametrize("turns", TURNS)
async def test_the_client_listener_closes_a_connection_it_accepted_as_it_stopped(
    turns: int, origin: Origin, tmp_path: Path
) -> None:
    async with open_node(make_config(tmp_path / "cache", [origin.url])) as node:
        server = make_server(node)
        runner = web.ServerRunner(server)
        await runner.setup()
        fast = make_fast(node, server)
        site, *_ = await start_listeners(node, runner, fast)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        with await connect_then_wait(port, turns) as client:
            await runner.cleanup()
            await fast.shutdown(1.0)
            assert closed(client)
    gc.collect()
