"""The entries each of a worker's memos keeps follow its pool of bytes (core.memo.generation), as the bytes do: a
fixed 4,096 a generation stopped a node from remembering its answers past ~6,000 heads asked in turn, whatever
cache.memory_headroom it was given (loadtest.fwdcpu: a forwarding node's long tail decided in full again)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgecache.core.memo import head_cost
from edgecache.proxy import decide
from tests.conftest import make_config, start_edge
from tests.e2e.test_memo_bytes import ask
from tests.origin import Origin

BODY = b"0123456789" * 100
COUNT = 6000


@pytest.mark.parametrize(("headroom", "decided_again"), [(64 * 2**20, True), (256 * 2**20, False)])
async def test_heads_asked_in_turn_stay_remembered_when_the_pool_holds_them(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, headroom: int, decided_again: bool
) -> None:
    """6,000 distinct heads for one object, asked twice in turn: with the default headroom (a pool of 32 MiB, 4,096
    entries a generation) the second round decides some again; with 256 MiB (128 MiB, 16,384 entries) none, and the
    pool's bytes are exactly its entries' costs, within its budget."""
    origin.put("/obj", BODY)
    config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=True)
    config = replace(config, cache=replace(config.cache, memory_headroom=headroom))
    heads = [f"GET /obj HTTP/1.1\r\nHost: video.test\r\nY: {n:08d}\r\n\r\n".encode() for n in range(COUNT)]
    async with start_edge(config) as edge:
        assert edge.fast is not None
        decider = edge.fast.decider
        assert await ask(edge.port, heads) == [(200, BODY)] * COUNT
        decisions: list[int] = []
        find_hit = decide.find_hit

        def counting(*args: Any, **kwargs: Any) -> Any:
            decisions.append(1)
            return find_hit(*args, **kwargs)

        monkeypatch.setattr(decide, "find_hit", counting)
        assert await ask(edge.port, heads) == [(200, BODY)] * COUNT
        assert (len(decisions) > 0) is decided_again
        assert decider.pool.budget == headroom // 2
        assert decider.memo.size == max(4096, headroom // 2 // 8192)
        kept = [*decider.memo.new, *decider.memo.old]
        assert decider.memo.bytes == sum(head_cost(h) for h in kept)
        assert decider.pool.bytes == decider.memo.bytes + decider.wholes.bytes <= decider.pool.budget
        if not decided_again:
            assert len(kept) == COUNT
        assert origin.hits["/obj"] == 1
