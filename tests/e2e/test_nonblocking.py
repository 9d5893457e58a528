"""Nothing on the request path blocks the event loop: blockbuster fails any blocking call made on it."""

from __future__ import annotations

from pathlib import Path

from blockbuster import blockbuster_ctx

from tests.conftest import make_config, start_edge
from tests.origin import Origin

MiB = 2**20


async def test_request_path_never_blocks_the_loop(origin: Origin, tmp_path: Path) -> None:
    data = bytes(range(256)) * (3 * MiB // 256)
    origin.put("/nb.bin", data)
    cfg = make_config(tmp_path / "c", [origin.url], memory_bytes=MiB)  # a small memory tier forces disk reads
    async with start_edge(cfg) as edge:
        with blockbuster_ctx("edgecache"):
            assert (await edge.get("/nb.bin"))[2] == data  # miss: fills and disk writes
            assert (await edge.get("/nb.bin"))[2] == data  # hit, partly from disk
            status, _, body = await edge.get("/nb.bin", Range="bytes=10-2097200")
            assert (status, body) == (206, data[10:2097201])
            assert (await edge.get("/nope"))[0] == 404
            async with edge.session.post(edge.url + "/p", data=b"x", headers={"Host": "video.test"}) as r:
                assert r.status == 201
