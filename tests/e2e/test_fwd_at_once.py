"""A forward whose site's share and connection to the owner are at hand is sent at once, in the turn its head was
read, with no task of its own (proxy.relay.Relay.at_once): a task's creation and its two turns were a tenth of a
forward's CPU time. Only one that must wait (its first, which connects) is carried by a task, as every one was."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Generator
from contextvars import Context
from pathlib import Path
from typing import Any

from tests.e2e.test_cluster import cluster_configs, owner_of, started
from tests.e2e.test_relay import answers, exchange, fast_path, request
from tests.origin import Origin


def _relay_tasks(loop: asyncio.AbstractEventLoop) -> tuple[list[int], Any]:
    """A count of the tasks made to carry a forward (proxy.relay.forward) from now, and the factory it replaced."""
    made = [0]
    before = loop.get_task_factory()

    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        context: Context | None = None,
    ) -> asyncio.Task[Any]:
        code = getattr(coro, "cr_code", None)
        if code is not None and code.co_name == "forward" and code.co_filename.endswith("relay.py"):
            made[0] += 1
        return asyncio.Task(coro, loop=loop, context=context)

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    return made, before


async def test_forwards_with_a_connection_at_hand_are_sent_without_a_task_byte_exact(
    origin: Origin, tmp_path: Path
) -> None:
    configs = cluster_configs(origin, tmp_path)
    paths = [p for p in (f"/once/{i}.bin" for i in range(100)) if owner_of(configs, p) == "node2"][:4]
    for i, p in enumerate(paths):
        origin.put(p, os.urandom(4096 + i))
    async with started(configs) as nodes:
        for p in paths:  # each filled once at its owner
            assert (await nodes[1].get(p))[::2] == (200, origin.objects[p].data)
        loop = asyncio.get_running_loop()
        made, before = _relay_tasks(loop)
        try:
            forwarded = fast_path("forwarded")
            got = [answers(await exchange(nodes[0].port, request(p, close=True)), ["GET"])[0] for p in paths * 3]
        finally:
            loop.set_task_factory(before)
        for (status, fields, body), p in zip(got, paths * 3, strict=True):
            assert (status, body) == (200, origin.objects[p].data), p
            assert fields["cache-status"] == 'edgecache; hit, edgecache; fwd=miss; detail="peer"'
            assert fields["via"] == "1.1 edgecache, 1.1 edgecache"
        assert fast_path("forwarded") - forwarded == 12
        assert all(origin.hits[p] == 1 for p in paths)
        # The first connects to the owner (a task waits for that); the other eleven find it idle. Before: twelve.
        assert made[0] == 1
