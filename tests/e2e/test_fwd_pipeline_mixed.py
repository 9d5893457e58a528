"""One loop turn's forwards to one owner, pipelined on its connections, whose answers are framed every way a
forward's may be: a body of a length, a 304 and a HEAD's with none, a 404, a range (alone on its connection). Each
viewer gets exactly its own answer, and only one (a desync would give one viewer another's bytes, or two answers)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.e2e.test_cluster import cluster_configs, owner_of, started
from tests.e2e.test_relay import answers, request
from tests.origin import Origin


async def test_a_mixed_batch_gives_each_viewer_its_own_answer(origin: Origin, tmp_path: Path) -> None:
    configs = cluster_configs(origin, tmp_path)
    names = (f"/mix/{i}.bin" for i in range(400))
    paths = [p for p in names if owner_of(configs, p) == "node2"][:6]
    for i, p in enumerate(paths[:5]):
        origin.put(p, os.urandom(3000 + i))
    async with started(configs) as nodes:
        first = nodes[0]
        for p in paths[:5]:
            assert (await first.get(p))[::2] == (200, origin.objects[p].data)
        a, b, c, d, e, missing = paths
        asked = [
            (a, request(a, close=True), "GET"),
            (b, request(b, 'If-None-Match: "v1"', close=True), "GET"),
            (c, request(c, method="HEAD", close=True), "HEAD"),
            (d, request(d, close=True), "GET"),
            (missing, request(missing, close=True), "GET"),
            (e, request(e, "Range: bytes=10-19", close=True), "GET"),
        ]
        for _ in range(3):
            conns = [await asyncio.open_connection("127.0.0.1", first.port) for _ in asked]
            for (_, w), (_, raw, _) in zip(conns, asked, strict=True):
                w.write(raw)
            got = []
            for r, w in conns:
                async with asyncio.timeout(20):
                    got.append(await r.read(-1))
                w.close()
            out = {p: answers(g, [m])[0] for (p, _, m), g in zip(asked, got, strict=True)}
            assert out[a][::2] == (200, origin.objects[a].data)
            assert out[b][::2] == (304, b"")
            assert (out[c][0], out[c][1]["content-length"], out[c][2]) == (200, str(len(origin.objects[c].data)), b"")
            assert out[d][::2] == (200, origin.objects[d].data)
            assert out[missing][0] == 404
            assert out[e][::2] == (206, origin.objects[e].data[10:20])
            for g in got:
                assert g.count(b"HTTP/1.1 ") == 1, g[:300]
    assert all(origin.hits[p] == 1 for p in paths[:5])  # every answer from the owner's copy
