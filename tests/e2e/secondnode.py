"""A raw origin's answer asked of a node that does not own it, in a 3-node cluster, on both paths: the head a viewer
gets through the owner's relay (test_obs_text, test_untyped, test_field_names)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tests.e2e.test_cluster import cluster_configs, owner_of, started
from tests.e2e.test_fast_path import get
from tests.origin import RawOrigin, RawReply, RawRequest
from tests.wire import exchange

CLOSE = "Connection: close"


async def through_a_second_node(
    reply: Callable[[RawRequest], RawReply], tmp_path: Path, body: bytes, check: Callable[[bytes], object]
) -> None:
    """Ask node1 twice (a miss at the owner, then a hit there) for an object node2 owns, fast path and framework
    path; each answer ends with `body` and passes `check`, and the origin is asked once a path."""
    origin = RawOrigin(reply)
    await origin.start()
    try:
        for fast in (True, False):
            configs = cluster_configs(origin, tmp_path / str(fast))  # type: ignore[arg-type]
            configs = [replace(c, fast_path=fast) for c in configs]
            path = next(p for p in (f"/c{fast:d}/{i}" for i in range(100)) if owner_of(configs, p) == "node2")
            async with started(configs) as nodes:
                for _ in range(2):
                    answer = await exchange(nodes[0].port, get(path, CLOSE))
                    assert answer.endswith(b"\r\n\r\n" + body), answer
                    check(answer)
            assert origin.hits[path] == 1
    finally:
        await origin.stop()
