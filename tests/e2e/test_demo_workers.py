"""The demo origin with two workers: worker 0 serves it, and starts it only once it has written the demo's files
(a 64 MiB video at a node's first start), so worker 1 listens seconds before. Its fills from the demo wait for
worker 0 in the backlog of the parent's demo listener: when worker 0 bound that listener itself, they were refused,
and a quick start with `workers = 2` answered 502 for its first seconds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.e2e.procs import edge_process, free_port

HELLO = b"Hello from the edgecache demo origin.\n"
CONNECTIONS = 16  # each on a new connection: spread over both workers' listeners, every one of them misses


async def test_two_workers_answer_the_demo_from_the_first_listening_line(tmp_path: Path) -> None:
    port, demo = free_port(), free_port()
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 2\n[demo]\norigin = "127.0.0.1:{demo}"\n'
        f'[cache]\ndir = "{tmp_path / "cache"}"\ndisk = "128MiB"\nmemory = "16MiB"\n'
        f'[[sites]]\nname = "demo"\nhosts = ["localhost"]\norigins = ["http://127.0.0.1:{demo}"]\n'
    )
    # The first worker to listen: worker 1, while worker 0 is still writing the demo's files.
    async with edge_process("serve", "--config", str(config), ready={b"edgecache listening on": 1}):

        async def fetch(n: int) -> tuple[int, bytes]:
            connector = aiohttp.TCPConnector(force_close=True)
            async with (
                aiohttp.ClientSession(connector=connector) as s,
                s.get(f"http://127.0.0.1:{port}/hello.txt?n={n}", headers={"Host": "localhost"}) as r,
            ):
                return r.status, await r.read()

        answers = await asyncio.gather(*(fetch(n) for n in range(CONNECTIONS)))
    assert answers == [(200, HELLO)] * CONNECTIONS
