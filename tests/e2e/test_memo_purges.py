"""A remembered hit keeps no purge table alive: every purge makes a new table, a copy of all its marks.

The fast path's memos keep each hit they decided, and a hit named the purge table it was decided under, so that
a purge since decides it again (Hit.same_basis). Held by the hit, each table outlived the purges after it: a memo
of 2 x 4,096 hits could keep a table per purge taken while it filled, each a copy of every mark (74 KB at 2,000
directories, 295 KB at the 10,000 a site may have), none of it in the bytes the memos are bounded by
(core.memo.Pool). The soak (loadtest/soak_mixed.py, a purge every 2 s) found up to 48 tables alive in a worker.
"""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path

from edgecache.core.purge import PurgeTable
from tests.e2e.adminkit import admin_node, node_config
from tests.e2e.test_memo_bytes import ask
from tests.origin import Origin

BODY = bytes(range(256)) * 40
ROUNDS = 40


async def test_remembered_hits_keep_no_purge_table_alive(origin: Origin, tmp_path: Path) -> None:
    origin.put("/obj", BODY)
    cfg = replace(node_config(origin, tmp_path / "c"), fast_path=True)
    async with admin_node(cfg) as node:
        assert node.edge.fast is not None
        memo = node.edge.fast.decider.memo
        assert (await node.edge.get("/obj"))[2] == BODY
        for i in range(ROUNDS):
            # A directory /obj is not in: the answer stays a hit, but it is decided again under the new table.
            status, said = await node.call("POST", "/purge", json={"prefix": f"http://video.test/d{i}/"})
            assert status == 200, said
            head = f"GET /obj HTTP/1.1\r\nHost: video.test\r\nX-Round: {i}\r\n\r\n".encode()
            assert await ask(node.edge.port, [head]) == [(200, BODY)]
        assert len(memo.new) + len(memo.old) >= ROUNDS  # each round's hit is remembered
        assert len(node.edge.node.store.purges.marks) == ROUNDS
        gc.collect()
        tables = [o for o in gc.get_objects() if isinstance(o, PurgeTable)]
        assert len(tables) <= 2, f"{len(tables)} purge tables alive after {ROUNDS} purges"
