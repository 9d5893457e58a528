"""A URL purge applied by one worker while a fill in the other waits between the judging of its head and the
storing of it (for its share of fill memory): the fill must not write the purged object's record back.

The fill of a cold Vary'd object writes the object's record (its Vary) with the generation it was asked under;
written after the purge's new generation, it made the purged copy current again: every worker served v1 after
the purge returned (3 runs of 3 before the fix, 0 of 4 after)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.e2e.procs import descendants, edge_process, free_port
from tests.e2e.test_operations import metric
from tests.e2e.test_worker_revalidation import Conn, accepted_by
from tests.e2e.test_workers import OPERATOR, READY, owner_of
from tests.origin import Origin

MiB = 2**20
BIG = bytes(i % 251 for i in range(3 * MiB))


def two_workers(tmp_path: Path, origin: Origin, port: int, admin: int, cache: str = "") -> Path:
    """The config of a node of two workers with an operator's admin token; `cache`: more [cache] lines."""
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 2\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[[admin.tokens]]\nname = "ops"\ntoken = "{OPERATOR}"\nrole = "operator"\n'
        f'[cache]\ndir = "{tmp_path / "c"}"\ndisk = "256MiB"\nmemory = "64MiB"\n{cache}'
        f'[[sites]]\nname = "videos"\nhosts = ["video.test"]\norigins = ["{origin.url}"]\n'
    )
    return cfg


@pytest.mark.parametrize("caught_up", [False, True], ids=["by-the-fill", "by-another-request"])
async def test_a_purge_while_a_fill_waits_for_memory_after_its_judge_is_not_undone(
    origin: Origin, tmp_path: Path, caught_up: bool
) -> None:
    """`caught_up`: a request to the fill's worker catches up on the purge while the fill waits (as any request
    under load does first), so the fill finds the object's record forgotten, not the one it was asked under."""
    hdrs = {"Cache-Control": "public, max-age=3600", "Vary": "Accept"}
    origin.put("/z.bin", b"1" * 100_000, etag='"v1"', headers=hdrs)
    origin.put("/w.bin", b"w" * 1000, etag='"w"')
    release = asyncio.Event()

    async def hold_big(request: web.BaseRequest, _obj: object) -> web.StreamResponse | None:
        if request.path != "/big.bin":
            return None
        resp = web.StreamResponse(headers={"Cache-Control": "public, max-age=3600", "ETag": '"b"'})
        resp.content_length = len(BIG)
        await resp.prepare(request)
        await resp.write(BIG[:1000])
        await release.wait()
        await resp.write(BIG[1000:])
        return resp

    origin.on_request = hold_big
    port, admin = free_port(), free_port()
    cfg = two_workers(tmp_path, origin, port, admin, 'fill_slices = 1\nfill_memory = "1MiB"\n')
    async with edge_process("serve", "--config", str(cfg), ready=READY) as proc, aiohttp.ClientSession() as s:
        pids = descendants(proc.pid)
        conns: dict[int, list[Conn]] = {}
        for _ in range(64):  # new connections until two are on the worker that does not serve the admin API
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            conn = Conn(reader, writer, 0)
            assert (await conn.get("/w.bin"))[2] == b"w" * 1000
            conn.pid = accepted_by(port, writer.get_extra_info("sockname")[1], pids)
            conns.setdefault(conn.pid, []).append(conn)
            if len(conns) == 2 and min(len(v) for v in conns.values()) >= 3:
                break
        admin_pid = owner_of(admin, set(conns))
        first, second, third = next(v for pid, v in conns.items() if pid != admin_pid)[:3]

        async def waiting() -> float:
            async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                return metric(await r.text(), "edgecache_fill_memory_waiting")

        try:
            big = asyncio.ensure_future(first.get("/big.bin"))  # holds the worker's fill memory
            await origin.wait_for_requests(len(origin.seen) + 1)
            z = asyncio.ensure_future(second.get("/z.bin"))  # judged, then waits for memory
            async with asyncio.timeout(10):
                while await waiting() < 1:  # noqa: ASYNC110 - another process: polled
                    await asyncio.sleep(0.02)
            origin.put("/z.bin", b"2" * 100_000, etag='"v2"', headers=hdrs)
            auth = {"Authorization": f"Bearer {OPERATOR}"}
            async with s.post(
                f"http://127.0.0.1:{admin}/purge", json={"url": "http://video.test/z.bin"}, headers=auth
            ) as r:
                assert r.status == 200, await r.text()
            if caught_up:
                assert (await third.get("/w.bin"))[2] == b"w" * 1000
        finally:
            release.set()
        assert (await big)[2] == BIG
        assert (await z)[2] == b"1" * 100_000  # asked before the purge
        for conns_of in conns.values():
            for conn in conns_of:
                status, fields, body = await conn.get("/z.bin")
                assert (status, fields.get("etag"), body) == (200, '"v2"', b"2" * 100_000)
        for conns_of in conns.values():
            for conn in conns_of:
                conn.writer.close()


async def _get_any(conn: Conn, path: str) -> tuple[int, dict[str, str], bytes]:
    """Conn.get, for an answer that may come chunked (a body of unknown length streamed as it comes)."""
    conn.writer.write(f"GET {path} HTTP/1.1\r\nHost: video.test\r\n\r\n".encode())
    head = await conn.reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    if "content-length" in fields:
        return int(lines[0].split()[1]), fields, await conn.reader.readexactly(int(fields["content-length"]))
    body = b""
    while size := int((await conn.reader.readuntil(b"\r\n"))[:-2], 16):
        body += (await conn.reader.readexactly(size + 2))[:-2]
    await conn.reader.readuntil(b"\r\n")
    return int(lines[0].split()[1]), fields, body


async def test_a_purge_while_a_body_of_unknown_length_streams_is_not_undone(origin: Origin, tmp_path: Path) -> None:
    """A body without Content-Length is made an object once it ended (Engine._store_length): a URL purge the
    admin worker applied while it streamed must not be written over by the record the fill was asked under."""
    origin.put("/u.bin", b"1" * 100_000, etag='"v1"', headers={"Cache-Control": "public, max-age=3600"})
    origin.put("/w.bin", b"w" * 1000, etag='"w"')
    release = asyncio.Event()

    async def hold_unsized(request: web.BaseRequest, _obj: object) -> web.StreamResponse | None:
        if request.path != "/u.bin" or release.is_set():
            return None
        resp = web.StreamResponse(headers={"Cache-Control": "public, max-age=3600", "ETag": '"v1"'})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"1" * 1000)
        await release.wait()
        await resp.write(b"1" * 99_000)
        return resp

    origin.on_request = hold_unsized
    port, admin = free_port(), free_port()
    cfg = two_workers(tmp_path, origin, port, admin)
    async with edge_process("serve", "--config", str(cfg), ready=READY) as proc, aiohttp.ClientSession() as s:
        pids = descendants(proc.pid)
        conns: dict[int, list[Conn]] = {}
        for _ in range(64):  # new connections until one is on each worker
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            conn = Conn(reader, writer, 0)
            assert (await conn.get("/w.bin"))[2] == b"w" * 1000
            conn.pid = accepted_by(port, writer.get_extra_info("sockname")[1], pids)
            conns.setdefault(conn.pid, []).append(conn)
            if len(conns) == 2:
                break
        admin_pid = owner_of(admin, set(conns))
        filler = next(v for pid, v in conns.items() if pid != admin_pid)[0]
        try:
            u = asyncio.ensure_future(_get_any(filler, "/u.bin"))
            await origin.wait_for_requests(len(origin.seen) + 1)
            origin.put("/u.bin", b"2" * 100_000, etag='"v2"', headers={"Cache-Control": "public, max-age=3600"})
            auth = {"Authorization": f"Bearer {OPERATOR}"}
            async with s.post(
                f"http://127.0.0.1:{admin}/purge", json={"url": "http://video.test/u.bin"}, headers=auth
            ) as r:
                assert r.status == 200, await r.text()
        finally:
            release.set()
        assert (await u)[2] == b"1" * 100_000  # asked before the purge
        for conns_of in conns.values():
            for conn in conns_of:
                status, fields, body = await _get_any(conn, "/u.bin")
                assert (status, fields.get("etag"), body) == (200, '"v2"', b"2" * 100_000)
        for conns_of in conns.values():
            for conn in conns_of:
                conn.writer.close()
