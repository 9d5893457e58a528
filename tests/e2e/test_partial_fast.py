"""A stored object some of whose slices are in neither tier is answered on the fast path (fwd=partial): the slices
it holds are sent from memory or disk, the others fetched for it as the answer goes out, and no connection is
handed to aiohttp for it. The first fetched slice's first bytes are in hand before the head is sent, so an origin
that changed version meanwhile leaves the request to the full handler, which starts again as a miss."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import make_config, start_edge
from tests.origin import Origin
from tests.samples import sample_value
from tests.wire import fast_path_outcomes, read_answer

MiB = 2**20
DATA = bytes(range(251)) * (3 * MiB // 251) + b"t" * (3 * MiB % 251)  # three 1 MiB slices


def partial_misses() -> float:
    return sum(
        sample_value("edgecache_misses_total", {"site": "videos", "cause": c}) or 0.0 for c in ("cold", "evicted")
    )


async def ask(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rng: str = "", path: str = "/p.bin"
) -> tuple[int, str, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: video.test\r\n{f'Range: bytes={rng}' if rng else ''}\r\n\r\n".encode())
    status, fields, body = await read_answer(reader)
    return status, fields[b"cache-status"].decode(), body


async def test_missing_slices_are_fetched_for_the_answer_on_the_fast_path(origin: Origin, tmp_path: Path) -> None:
    origin.put("/p.bin", DATA)
    async with start_edge(make_config(tmp_path / "cache", [origin.url])) as edge:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            async with asyncio.timeout(20):
                status, cache, body = await ask(reader, writer, f"{MiB}-{2 * MiB - 1}")  # a miss: slice 1 only
                assert (status, cache, body) == (206, "edgecache; fwd=uri-miss; stored", DATA[MiB : 2 * MiB])
                before, misses = fast_path_outcomes(), partial_misses()
                for expected in ("edgecache; fwd=partial", "edgecache; hit"):  # twice: then every slice is held
                    assert await ask(reader, writer) == (200, expected, DATA)
                after = fast_path_outcomes()
        finally:
            writer.close()
    assert {k: after[k] - before[k] for k in after} == {"answered": 2, "handed_off": 0, "taken_back": 0, "forwarded": 0}
    assert partial_misses() - misses == 1  # one miss, counted once
    # Slice 1 once, then the slices the whole answer lacked, each once: 0, and 2 (not a run: 1 was held).
    assert origin.range_hits("/p.bin") == [
        f"bytes={MiB}-{2 * MiB - 1}",
        f"bytes=0-{MiB - 1}",
        f"bytes={2 * MiB}-{3 * MiB - 1}",
    ]


async def test_a_new_version_met_while_fetching_is_a_miss_of_it_never_a_mix(origin: Origin, tmp_path: Path) -> None:
    async with start_edge(make_config(tmp_path / "cache", [origin.url])) as edge:
        before = fast_path_outcomes()["handed_off"]
        for path in ("/p.bin", "/q.bin"):  # twice, each on a connection of its own
            origin.put(path, DATA, etag='"v1"')
            reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
            try:
                async with asyncio.timeout(20):
                    assert (await ask(reader, writer, f"{MiB}-{2 * MiB - 1}", path))[2] == DATA[MiB : 2 * MiB]
                    new = bytes(reversed(DATA))
                    origin.put(path, new, etag='"v2"')
                    status, _, body = await ask(reader, writer, path=path)
                    assert (status, body) == (200, new)  # all of the new version: the old slice 1 was dropped
            finally:
                writer.close()
        # Decided again on the fast path once the new version was met: a miss of it (or of the fill that met it,
        # should that one still run), not handed off
        assert fast_path_outcomes()["handed_off"] == before
