"""Several worker processes on one listener and one disk tier: each slice is still fetched from origin once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import aiohttp
from aiohttp import web

from edgecache.storage.leases import LEASE_SECONDS
from tests.e2e.procs import descendants, edge_process, free_port, wait_lines
from tests.e2e.test_operations import metric
from tests.origin import Origin

MiB = 2**20
# cache.lease for the tests whose second worker waits out the first one's lease (the first fill held by the origin):
# what they assert holds for any lease, and the default's 10 s were most of their time.
SHORT_LEASE = 3.0
# cache.lease at its longest: no lease lapses within a test, however slow the machine. For the tests that tell a lease
# let go from one that lapsed, and for those that hold the origin while they poll (up to 20 s): a lease lapses 10 s
# (the default) after its fill last received bytes, and then another worker fetches the slice too, as promised.
NEVER_LAPSES = 3600.0
DATA = bytes((i * 13 + i // 65521) % 256 for i in range(12 * MiB + 99))


def covered(ranges: list[str | None]) -> list[int]:
    """Slice indices each origin Range header covered, one entry per fetch of a slice."""
    out: list[int] = []
    for r in ranges:
        assert r is not None
        first, last = (int(x) for x in r.removeprefix("bytes=").split("-"))
        out += range(first // MiB, min(last, len(DATA) - 1) // MiB + 1)
    return out


OPERATOR = "operator-token-0123456789"
READY = {b"admin listening on": 1, b"edgecache listening on": 2}  # both workers, and the admin listener


def two_workers(tmp_path: Path, origin: Origin, port: int, admin: int, lease: float = LEASE_SECONDS) -> Path:
    """A config file for a node of two workers with an operator token; `lease`: its cache.lease. Its tier gauges
    are sampled every half second (cache.stats_interval): tests wait for a slice to be in a memory tier on them."""
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 2\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[[admin.tokens]]\nname = "ops"\ntoken = "{OPERATOR}"\nrole = "operator"\n'
        f'[cache]\ndir = "{tmp_path / "c"}"\ndisk = "256MiB"\nmemory = "64MiB"\nfill_slices = 4\nlease = {lease}\n'
        "stats_interval = 0.5\n"
        f'[[sites]]\nname = "videos"\nhosts = ["video.test"]\norigins = ["{origin.url}"]\n'
    )
    return cfg


async def test_two_workers_fetch_each_slice_once(origin: Origin, tmp_path: Path) -> None:
    origin.put("/w.bin", DATA)
    port, admin = free_port(), free_port()
    cfg = two_workers(tmp_path, origin, port, admin, NEVER_LAPSES)  # the origin is held below
    async with edge_process("serve", "--config", str(cfg), ready=READY), aiohttp.ClientSession() as s:

        async def get(first: int, last: int) -> bytes:
            headers = {"Host": "video.test", "Range": f"bytes={first}-{last}", "Connection": "close"}
            async with s.get(f"http://127.0.0.1:{port}/w.bin", headers=headers) as r:
                assert r.status == 206
                return await r.read()

        async def collapsed() -> float:
            async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                return metric(await r.text(), "edgecache_collapsed_waits_total")

        assert await get(0, 99) == DATA[:100]  # the object's metadata is on the shared disk now
        seen = len(origin.seen)
        origin.gate = asyncio.Event()  # hold every origin body: the workers' misses overlap
        asks = [((1 + k % 11) * MiB + k, (1 + k % 11) * MiB + k + 999) for k in range(24)]
        tasks = [asyncio.ensure_future(get(a, b)) for a, b in asks]
        async with asyncio.timeout(20):
            # Some worker waits on the other's lease; polled, since that happens in another process.
            while await collapsed() < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        origin.gate.set()
        bodies = await asyncio.gather(*tasks)
        assert bodies == [DATA[a : b + 1] for a, b in asks]
        fetched = covered([x.headers.get("Range") for x in origin.seen[seen:] if x.path == "/w.bin"])
        assert sorted(fetched) == sorted(set(fetched))  # no slice fetched twice, across both workers
        assert set(fetched) <= set(range(1, 13))


async def test_a_purge_reaches_every_worker_before_its_next_answer(origin: Origin, tmp_path: Path) -> None:
    """Purges are applied by the worker that serves the admin API; the others must not answer from what they
    still hold in memory (records, metadata, memoised fast-path answers) once the purge has returned."""
    origin.put("/p.bin", b"old " * 1000, etag='"old"')
    origin.put("/dir/q.bin", b"old " * 500, etag='"old"')
    port, admin = free_port(), free_port()
    cfg = two_workers(tmp_path, origin, port, admin)
    async with edge_process("serve", "--config", str(cfg), ready=READY), aiohttp.ClientSession() as s:
        assert await bodies(s, port, "/p.bin") == {b"old " * 1000}
        assert await bodies(s, port, "/dir/q.bin") == {b"old " * 500}
        origin.put("/p.bin", b"new " * 1000, etag='"new"')
        origin.put("/dir/q.bin", b"new " * 500, etag='"new"')
        await purge(s, admin, {"url": "http://video.test/p.bin"})
        assert await bodies(s, port, "/p.bin") == {b"new " * 1000}
        await purge(s, admin, {"prefix": "http://video.test/dir/"})
        assert await bodies(s, port, "/dir/q.bin") == {b"new " * 500}


async def bodies(s: aiohttp.ClientSession, port: int, path: str, times: int = 30) -> set[bytes]:
    """The bodies of `times` GETs of `path`, each 200 on a new connection: SO_REUSEPORT spreads them over the
    workers."""
    seen = set()
    for _ in range(times):
        headers = {"Host": "video.test", "Connection": "close"}
        async with s.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r:
            assert r.status == 200
            seen.add(await r.read())
    return seen


async def purge(s: aiohttp.ClientSession, admin: int, body: dict[str, object]) -> None:
    auth = {"Authorization": f"Bearer {OPERATOR}"}
    async with s.post(f"http://127.0.0.1:{admin}/purge", json=body, headers=auth) as r:
        assert r.status == 200, await r.text()


async def test_a_whole_fill_in_one_worker_leaves_the_other_its_slices_to_wait_for(
    origin: Origin, tmp_path: Path
) -> None:
    """A cold miss fills the whole object in one worker; requests of it that the other worker takes meanwhile (its
    metadata is on the shared disk from the head on) fetched the slices the whole fill was about to bring with
    ranges of their own: each slice twice from the origin, and, once a soft purge let a new version in, those
    ranges brought it and cut the answers of the old one. The whole fill leases the run of slices ahead of it
    (fill_slices), as a ranged fill does, so the other worker waits for them; the head is not held for them."""
    origin.put("/w.bin", DATA)
    release = asyncio.Event()

    async def pause_after_first_slice(request: web.BaseRequest, obj: object) -> web.StreamResponse | None:
        if request.headers.get("Range") is not None:
            return None
        resp = web.StreamResponse(headers={"Cache-Control": "public, max-age=3600", "ETag": '"v1"'})
        resp.content_length = len(DATA)
        await resp.prepare(request)
        # Into slice 1: the answer's head waits for the first bytes of the first slice it does not hold yet
        # (diskhit._partial), and the client reads slice 0 before the origin goes on.
        await resp.write(DATA[: MiB + 1000])
        await release.wait()
        await resp.write(DATA[MiB + 1000 :])
        return resp

    origin.on_request = pause_after_first_slice
    port, admin = free_port(), free_port()
    cfg = two_workers(tmp_path, origin, port, admin, NEVER_LAPSES)  # the origin is held below
    async with edge_process("serve", "--config", str(cfg), ready=READY), aiohttp.ClientSession() as s:

        async def get(headers: dict[str, str]) -> bytes:
            headers = {"Host": "video.test", "Connection": "close", **headers}
            async with s.get(f"http://127.0.0.1:{port}/w.bin", headers=headers) as r:
                return await r.read()

        async def waited() -> float:
            async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                return metric(await r.text(), "edgecache_collapsed_waits_total")

        try:
            async with asyncio.timeout(20):
                answer = await s.get(f"http://127.0.0.1:{port}/w.bin", headers={"Host": "video.test"})
                first = await answer.content.readexactly(MiB)  # the metadata is on the disk before the body
                # Slices 1 to 4, the run a whole fill at slice 0 leases, on new connections: both workers take some
                asks = [(k % 4 + 1) * MiB + 1000 * k for k in range(12)]
                tasks = [asyncio.ensure_future(get({"Range": f"bytes={a}-{a + 99}"})) for a in asks]
                while not origin.range_hits("/w.bin")[1:] and await waited() < 1:  # noqa: ASYNC110 - another process
                    await asyncio.sleep(0.05)
        finally:
            release.set()
        bodies = await asyncio.gather(*tasks)
        assert first + await answer.read() == DATA
        answer.release()
    assert bodies == [DATA[a : a + 100] for a in asks]
    assert origin.range_hits("/w.bin") == [None]


async def test_two_workers_that_miss_one_cold_object_at_once_name_one_copy(origin: Origin, tmp_path: Path) -> None:
    """Both workers miss an object nothing is stored of, and each names a copy of it before the other's is on the
    shared disk. The copy whose metadata reached the disk first is the one both go on with: each of its later
    slices is fetched once for both (before, each worker fetched every slice for its own copy)."""
    origin.put("/c.bin", DATA)
    port, admin = free_port(), free_port()
    cfg = two_workers(tmp_path, origin, port, admin, SHORT_LEASE)  # the second fill goes once the first's lease lapses
    async with edge_process("serve", "--config", str(cfg), ready=READY), aiohttp.ClientSession() as s:

        async def get(first: int, last: int) -> bytes:
            headers = {"Host": "video.test", "Range": f"bytes={first}-{last}", "Connection": "close"}
            async with s.get(f"http://127.0.0.1:{port}/c.bin", headers=headers) as r:
                assert r.status == 206
                return await r.read()

        origin.gate = asyncio.Event()  # every head held: both workers' first fills are in flight together
        cold: list[asyncio.Future[bytes]] = []
        for _ in range(64):  # new connections, until one lands on the second worker (its own origin request)
            cold.append(asyncio.ensure_future(get(0, 99)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(origin.wait_for_requests(2), 0.2)
                break
        assert len(origin.seen) == 2, "the kernel gave every connection to one worker"
        origin.gate.set()
        assert await asyncio.gather(*cold) == [DATA[:100]] * len(cold)
        first_run = set(covered([x.headers.get("Range") for x in origin.seen]))
        asks = [(i * MiB + k, i * MiB + k + 999) for i in range(13) for k in range(6)]
        for a, b in asks:  # one at a time, each on a new connection: every slice is asked of both workers
            assert await get(a, b) == DATA[a : b + 1]
        fetched = covered([x.headers.get("Range") for x in origin.seen])
        later = [i for i in fetched if i not in first_run]
        assert sorted(later) == sorted(set(later)) == [i for i in range(13) if i not in first_run]


async def test_a_fill_in_flight_in_another_worker_does_not_undo_a_url_purge(origin: Origin, tmp_path: Path) -> None:
    """A URL purge gives the object's record a new generation, applied by the worker serving the admin API. A cold
    fill of a Vary'd object in flight in the other worker came back after it: that worker judged it by the record it
    still held (no request had told it of the purge yet), stored it, and wrote that record (the old generation,
    the Vary it learned) over the purge's. The purged copy was then served by every worker that read the record."""
    hdrs = {"Cache-Control": "public, max-age=3600", "Vary": "Accept-Encoding"}
    origin.put("/z.bin", b"1" * 100_000, etag='"v1"', headers=hdrs)
    port, admin = free_port(), free_port()
    cfg = two_workers(tmp_path, origin, port, admin, SHORT_LEASE)  # the second fill goes once the first's lease lapses
    session = aiohttp.ClientSession(skip_auto_headers=("Accept-Encoding",))  # the key holds the field as sent: absent
    async with edge_process("serve", "--config", str(cfg), ready=READY), session as s:

        async def get() -> tuple[str | None, bytes]:
            headers = {"Host": "video.test", "Connection": "close"}
            async with s.get(f"http://127.0.0.1:{port}/z.bin", headers=headers) as r:
                assert r.status == 200
                return r.headers.get("ETag"), await r.read()

        origin.gate = asyncio.Event()  # every head held: a cold fill in flight in each worker
        cold: list[asyncio.Future[tuple[str | None, bytes]]] = []
        for _ in range(64):  # new connections, until one lands on the second worker (its own origin request)
            cold.append(asyncio.ensure_future(get()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(origin.wait_for_requests(2), 0.2)
                break
        assert len(origin.seen) == 2, "the kernel gave every connection to one worker"
        origin.put("/z.bin", b"2" * 100_000, etag='"v2"', headers=hdrs)
        auth = {"Authorization": f"Bearer {OPERATOR}"}
        url = {"url": "http://video.test/z.bin"}
        async with s.post(f"http://127.0.0.1:{admin}/purge", json=url, headers=auth) as r:
            assert r.status == 200, await r.text()
        origin.gate.set()
        versions = {'"v1"': b"1" * 100_000, '"v2"': b"2" * 100_000}  # asked before the purge: either, whole
        assert all(versions.get(etag) == body for etag, body in await asyncio.gather(*cold))
        assert [await get() for _ in range(30)] == [('"v2"', b"2" * 100_000)] * 30


def owner_of(port: int, pids: set[int]) -> int:
    """Which of `pids` has the socket of local port `port` on 127.0.0.1 (read from /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rpartition(":")[2], 16) == port:
            inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir()):
                return pid
    raise AssertionError(f"no process of {pids} has port {port}")


async def test_a_slice_a_killed_worker_was_fetching_is_fetched_at_once(origin: Origin, tmp_path: Path) -> None:
    """A worker killed mid-fill leaves its slices' leases on the shared disk. The others waited on them until they
    expired (LEASE_SECONDS, 10 s) before fetching the slices themselves: a lease named no holder. A lease names
    its process now, and one whose process is gone is let go at once.

    The lease never lapses here (NEVER_LAPSES), so every answer is that let-go's. Bounded by half the default lease
    instead, the answers also waited for the killed worker's successor: the supervisor keeps its listener, and the
    connections the kernel gives it wait until the new worker accepts them, which took 8 s on a loaded machine."""
    origin.put("/k.bin", DATA)
    peers: list[int] = []

    def note(request: web.BaseRequest, _obj: object) -> None:
        peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]

    origin.on_request = note
    port, admin = free_port(), free_port()
    cfg = two_workers(tmp_path, origin, port, admin, NEVER_LAPSES)
    async with edge_process("serve", "--config", str(cfg), ready=READY) as proc, aiohttp.ClientSession() as s:

        async def get(first: int, last: int) -> bytes:
            headers = {"Host": "video.test", "Range": f"bytes={first}-{last}", "Connection": "close"}
            async with s.get(f"http://127.0.0.1:{port}/k.bin", headers=headers) as r:
                assert r.status == 206
                return await r.read()

        assert await get(0, 99) == DATA[:100]  # the object's metadata is on the shared disk now
        origin.gate = asyncio.Event()  # the fill of slice 5 holds its lease, and never ends
        killed = asyncio.ensure_future(get(5 * MiB, 5 * MiB + 99))
        await origin.wait_for_requests(2)
        os.kill(owner_of(peers[-1], descendants(proc.pid)), signal.SIGKILL)
        origin.gate.set()
        await wait_lines(proc, {b"edgecache listening on": 1})  # its successor: each request may land on either
        async with asyncio.timeout(30):  # a hang's bound only: a lease that were not let go would hold for an hour
            with contextlib.suppress(aiohttp.ClientError):
                await killed  # (aiohttp may ask again, on a new connection, and be answered)
            for k in range(6):  # whichever worker each lands on
                assert await get(5 * MiB + k, 5 * MiB + k + 999) == DATA[5 * MiB + k : 5 * MiB + k + 1000]
        assert covered(origin.range_hits("/k.bin")) == [0, 5, 5]  # the killed worker's, then one for all


async def test_a_copy_one_worker_replaced_is_the_one_every_worker_serves(origin: Origin, tmp_path: Path) -> None:
    """A request with no-cache in one worker brought the origin's new version and stored it over the old one; the
    other worker still held the old copy's metadata in memory and served it until it expired (16 of 20 answers
    after the new one was stored). A cache uses the most recent stored response (RFC 9111 4): every worker does."""
    origin.put("/r.bin", b"1" * 50_000, etag='"v1"')
    port, admin = free_port(), free_port()
    cfg = two_workers(tmp_path, origin, port, admin)
    async with edge_process("serve", "--config", str(cfg), ready=READY), aiohttp.ClientSession() as s:

        async def get(extra: dict[str, str]) -> tuple[str | None, bytes]:
            headers = {"Host": "video.test", "Connection": "close", **extra}
            async with s.get(f"http://127.0.0.1:{port}/r.bin", headers=headers) as r:
                assert r.status == 200
                return r.headers.get("ETag"), await r.read()

        assert [await get({}) for _ in range(30)] == [('"v1"', b"1" * 50_000)] * 30  # held by both workers
        origin.put("/r.bin", b"2" * 50_000, etag='"v2"')
        assert await get({"Cache-Control": "no-cache"}) == ('"v2"', b"2" * 50_000)
        assert [await get({}) for _ in range(30)] == [('"v2"', b"2" * 50_000)] * 30
        assert origin.seen[-1].headers.get("If-None-Match") == '"v1"'  # v2 fetched once: by the no-cache request
