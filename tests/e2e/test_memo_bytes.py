"""The fast path's memos are bounded by the bytes their entries hold, not by their number alone.

Each memo kept up to 2 x 4,096 heads, and an entry holds its head, the fields parsed from it, the Hit and its key:
about 25 KB for a head of 120 fields. One anonymous client sending distinct fat heads for one cached object took
a worker from 51 to 277 MiB of RSS (473 MiB with a Range on each, which fills two memos), against a budget of 80.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgecache.core.memo import fields_cost, head_cost
from edgecache.proxy import decide, forwardmemo, relay
from tests.conftest import make_config, start_edge
from tests.e2e.test_cluster import cluster_configs, owner_of, started
from tests.origin import Origin
from tests.wire import read_answer

BODY = bytes(range(256)) * 40
FAT = "".join(f"X{j}: abcdefgh\r\n" for j in range(120))
COUNT = 3000


def fat_head(n: int, extra: str = "") -> bytes:
    """A head of 122 fields (123 with a Range), distinct by its Y field, always of the same length."""
    return f"GET /obj HTTP/1.1\r\nHost: video.test\r\n{FAT}Y: {n:016x}\r\n{extra}\r\n".encode()


async def ask(port: int, heads: list[bytes]) -> list[tuple[int, bytes]]:
    """Each head on one kept-alive connection, 100 at a time: (status, body) of each answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for start in range(0, len(heads), 100):
            batch = heads[start : start + 100]
            writer.write(b"".join(batch))
            for _ in batch:
                status, _, body = await read_answer(reader)
                answers.append((status, body))
    finally:
        writer.close()
    return answers


async def test_distinct_fat_heads_hold_at_most_the_memos_byte_budget(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin.put("/obj", BODY)
    config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=True)
    async with start_edge(config) as edge:
        assert edge.fast is not None
        decider = edge.fast.decider
        assert (await edge.get("/obj"))[2] == BODY
        assert decide.MEMO_BYTES == 16 * 2**20

        plain = [fat_head(n) for n in range(COUNT)]
        assert {len(h) for h in plain} == {1870}
        assert head_cost(plain[0]) == 25860  # 648 fit a generation
        assert await ask(edge.port, plain) == [(200, BODY)] * COUNT
        # 3,000 added: a full older generation of 648 and the newer's 3,000 - 4 x 648 = 408
        assert len(decider.memo) == 1056
        assert decider.memo.bytes == 1056 * 25860

        ranged = [fat_head(n, "Range: bytes=0-9\r\n") for n in range(COUNT, 2 * COUNT)]
        assert head_cost(ranged[0]) == 26056  # 643 fit a generation
        assert await ask(edge.port, ranged) == [(206, BODY[:10])] * COUNT
        assert (len(decider.wholes), len(decider.cuts)) == (1056, 1071)  # the heads without Range, and with it
        assert (decider.wholes.bytes, decider.cuts.bytes) == (1056 * 25860, 1071 * 26056)
        for memo in (decider.memo, decider.wholes, decider.cuts):
            assert memo.bytes <= 2 * decide.MEMO_BYTES

        # A thin head is still decided once, then answered from the memo, and a range of it cut once
        lookups: list[str] = []
        find_hit = decide.find_hit

        def counting(*args: Any, **kwargs: Any) -> Any:
            lookups.append(args[3])
            return find_hit(*args, **kwargs)

        monkeypatch.setattr(decide, "find_hit", counting)
        thin = b"GET /obj HTTP/1.1\r\nHost: video.test\r\nUser-Agent: player/1\r\n\r\n"
        cut = b"GET /obj HTTP/1.1\r\nHost: video.test\r\nUser-Agent: player/1\r\nRange: bytes=5-9\r\n\r\n"
        assert await ask(edge.port, [thin, cut] * 3) == [(200, BODY), (206, BODY[5:10])] * 3
        assert lookups == ["/obj", "/obj"]  # the thin head's answer, and the whole one its range is cut from
        assert decider.memo.get(thin) is not None
        assert decider.cuts.get(cut) is not None
        assert origin.hits["/obj"] == 1


async def test_distinct_fat_heads_forwarded_hold_at_most_the_byte_budget(origin: Origin, tmp_path: Path) -> None:
    """The same at a node that forwards them: its remembered forwards, and the heads it sent the owner (relay). Over
    100 objects, each asked fewer times than makes it hot here (core.popularity), so every request is forwarded."""
    configs = cluster_configs(origin, tmp_path)
    paths = [p for p in (f"/f/{i:04d}" for i in range(1000)) if owner_of(configs, p) == "node2"][:100]
    for path in paths:
        origin.put(path, BODY)
    relay._SENT.clear()  # a module's: other tests' heads, of other costs
    heads = [fat_head(n).replace(b"GET /obj ", f"GET {paths[n % 100]} ".encode()) for n in range(COUNT)]
    assert {len(h) for h in heads} == {1873}
    assert head_cost(heads[0]) == 25866  # 648 fit a generation
    assert forwardmemo.BYTES == 16 * 2**20
    async with started(configs) as nodes:
        assert await ask(nodes[0].port, heads) == [(200, BODY)] * COUNT
        assert nodes[0].fast is not None
        forwards = nodes[0].fast.decider.forwards.entries
        assert len(forwards) == 1056
        assert forwards.bytes == 1056 * 25866
        sent = relay._SENT
        assert len(sent) < COUNT
        assert sent.bytes == sum(fields_cost(m[2], m[3]) for m in (*sent.new, *sent.old))
        assert sent.bytes <= 2 * 16 * 2**20
        assert all(origin.hits[path] == 1 for path in paths)
