"""The fast path's memos are bounded by the bytes their entries hold, not by their number alone.

Each memo kept up to 2 x 4,096 heads, and an entry holds its head, the fields parsed from it, the Hit and its key:
about 25 KB for a head of 120 fields. One anonymous client sending distinct fat heads for one cached object took
a worker from 51 to 277 MiB of RSS (473 MiB with a Range on each, which fills two memos), against a budget of 80.
Bounded by bytes each, the memos still took a worker to 127 MiB with both kinds of heads: all of a worker's memos
now hold one budget together (core.memo.Pool, config.CacheSettings.memo_bytes).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgecache.core.memo import generation, head_cost
from edgecache.proxy import decide, forwardmemo
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


async def test_distinct_fat_heads_hold_at_most_the_workers_memo_budget(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All the memos of a worker hold one budget together, half of cache.memory_headroom: each memo alone held
    up to 2 x 16 MiB, and a flood of fat heads with and without Range filled three (79 MiB accounted here), which
    took a worker to 127 MiB of RSS against a budget of 80 (cache.memory 16 MiB + memory_headroom 64 MiB). A thin
    head asked now and then during the flood is still decided once, and its range cut twice: a range's cut is
    remembered from its second time."""
    origin.put("/obj", BODY)
    config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=True)
    config = replace(config, cache=replace(config.cache, memory_headroom=32 * 2**20))  # a pool of 16 MiB
    async with start_edge(config) as edge:
        assert edge.fast is not None
        decider = edge.fast.decider
        memos = (decider.memo, decider.wholes, decider.cuts, decider.hopped, decider.forwards.entries)
        assert (await edge.get("/obj"))[2] == BODY
        lookups: list[str] = []
        find_hit = decide.find_hit

        def counting(*args: Any, **kwargs: Any) -> Any:
            if ("User-Agent", "player/1") in args[4]:
                lookups.append(dict(args[4]).get("Range", "-"))
            return find_hit(*args, **kwargs)

        monkeypatch.setattr(decide, "find_hit", counting)
        thin = b"GET /obj HTTP/1.1\r\nHost: video.test\r\nUser-Agent: player/1\r\n\r\n"
        cut = b"GET /obj HTTP/1.1\r\nHost: video.test\r\nUser-Agent: player/1\r\nRange: bytes=5-9\r\n\r\n"
        plain = [fat_head(n) for n in range(COUNT)]
        assert {len(h) for h in plain} == {1870}
        assert head_cost(plain[0]) == 25860
        ranged = [fat_head(n, "Range: bytes=0-9\r\n") for n in range(COUNT, 2 * COUNT)]
        assert head_cost(ranged[0]) == 26056
        heads, expected = [], []
        for n in range(COUNT):  # a plain and a ranged head in turn, the thin ones every 102
            heads += [plain[n], ranged[n]]
            expected += [(200, BODY), (206, BODY[:10])]
            if n % 50 == 0:
                heads += [thin, cut]
                expected += [(200, BODY), (206, BODY[5:10])]
        assert await ask(edge.port, heads) == expected
        assert decider.pool.budget == 16 * 2**20  # half of the headroom
        # Each turn of the memos' generations came after 162 rounds of a plain and a ranged head (8 MiB added: half
        # the budget): the ranged ones add the whole answer they are cut from, not their cut, which is kept only
        # from a range's second time (Decider.seen). Each memo's older generation holds the last of them, its newer
        # those since.
        assert [(len(m.new), len(m.old)) for m in memos] == [(85, 162), (85, 162), (1, 0), (0, 0), (0, 0)]
        assert [m.bytes for m in memos] == [
            246 * 25860 + head_cost(thin),
            247 * 25860,  # the plain heads the ranged ones are cut from (the thin one's is not asked: its cut is)
            head_cost(cut),
            0,
            0,
        ]
        assert decider.pool.bytes == 12755260
        assert len(decider.seen) == COUNT + 1  # the hash of each ranged head, and of the thin one
        assert lookups == ["-", "-"]  # the thin head's answer, and the whole one its range is cut from
        assert decider.memo.get(thin) is not None
        assert decider.cuts.get(cut) is not None
        assert origin.hits["/obj"] == 1


async def test_distinct_fat_heads_forwarded_hold_at_most_the_byte_budget(origin: Origin, tmp_path: Path) -> None:
    """The same at a node that forwards them: its remembered forwards, and the heads it sent the owner (proxy.relay,
    remembered with the forwards, in the same pool). Over
    100 objects, each asked fewer times than makes it hot here (core.popularity), so every request is forwarded."""
    pooled = 32 * 2**20  # a memo pool of 16 MiB
    # The three nodes and this client share one loop, which the 3,000 fat heads stall on a loaded machine: within
    # cluster_configs' timeout (STALL), no node takes itself for paused nor its peer for down.
    configs = [replace(c, cache=replace(c.cache, memory_headroom=pooled)) for c in cluster_configs(origin, tmp_path)]
    paths = [p for p in (f"/f/{i:04d}" for i in range(1000)) if owner_of(configs, p) == "node2"][:100]
    for path in paths:
        origin.put(path, BODY)
    heads = [fat_head(n).replace(b"GET /obj ", f"GET {paths[n % 100]} ".encode()) for n in range(COUNT)]
    assert {len(h) for h in heads} == {1873}
    assert head_cost(heads[0]) == 25866  # 648 fit a generation
    assert generation(pooled // 2) == (4096, 16 * 2**20)  # what each generation holds in a pool of 16 MiB
    async with started(configs) as nodes:
        assert await ask(nodes[0].port, heads) == [(200, BODY)] * COUNT
        assert nodes[0].fast is not None
        forwards = nodes[0].fast.decider.forwards.entries
        pool, sent = nodes[0].fast.decider.pool, nodes[0].fast.decider.forwards.sent
        # within its worker's memo budget with the heads sent for them: the generations turn at half of 16 MiB
        # each forward adds its entry (25,866 bytes) and the head sent for it (about 2,100): the generations turn
        # every 300 (half of 16 MiB); the head written for the owner's answers, remembered once (proxy.relayhead: the
        # 100 objects' answers have the same fields but for Date and Age), made the first turn one forward earlier:
        # 3,000 leave 300 and 1
        heads = nodes[0].fast.decider.forwards.heads.memo
        assert len(heads) == 1
        assert (len(forwards.old), len(forwards.new)) == (300, 1)
        assert forwards.bytes == 301 * 25866
        assert len(sent) < COUNT
        assert sent.bytes == sum(forwardmemo._sent_cost(m) for m in (*sent.new, *sent.old))
        assert pool.bytes == forwards.bytes + sent.bytes + heads.bytes <= pool.budget == 16 * 2**20
        assert all(origin.hits[path] == 1 for path in paths)
