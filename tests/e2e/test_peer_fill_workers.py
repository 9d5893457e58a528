"""The cross-worker form of tests/e2e/test_peer_fill_join: a two-worker node in a cluster, whose miss in one worker
is answered by the previous owner's cache (a look-aside, judged for that worker's request alone), while the other
worker's miss for a viewer asking no-cache waits on the first one's lease (proxy.revalidating). That viewer is not
answered the peer's copy: its worker fills for itself, the origin asked. The previous owner is a stand-in on the
member's address, held at the test object's first look-aside. Real processes, exact bytes, hit counts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from edgecache.core import hop
from edgecache.core.ring import Member, Ring
from tests.conftest import CLUSTER_KEY
from tests.e2e.procs import edge_process, free_port
from tests.e2e.test_lookaside_receive import FRAMED, ORIGIN_BYTES
from tests.e2e.test_worker_revalidation import collapsed, one_per_worker
from tests.e2e.test_workers import READY
from tests.origin import Obj, Origin

WARM = b"w" * 1000  # what the connections ask first, to learn which worker has each
HELD_FRESH = {"Cache-Control": "public, max-age=3600", "Age": "50", **FRAMED}  # fresh here, 50 s old


def owned(prefix: str, members: tuple[Member, ...]) -> str:
    """A path node1 owns, whose previous owner is node2 (the stand-in): ownership is by id alone."""
    ring = Ring.of(members)
    return next(
        p for p in (f"{prefix}/{i}" for i in range(200)) if ring.owners(f"videos|video.test|{p}")[0].id == "node1"
    )


def config(tmp_path: Path, origin: Origin, port: int, admin: int, peer: int) -> Path:
    """Two workers, node1 of a cluster whose node2 is the stand-in on `peer` (checked by a connect: no admin).

    cluster.timeout bounds a look-aside too (proxy.clusterfill), and the stand-in holds the first one while the test
    polls (up to 20 s) for the other worker's wait. At 0.5 s, a loaded machine's steps outlasted it: the look-aside
    ended, and the origin answered the first request. 30 s: a hang's bound."""
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 2\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[cache]\ndir = "{tmp_path / "c"}"\ndisk = "256MiB"\nmemory = "64MiB"\nfill_slices = 4\n'
        f'[cluster]\nself = "node1"\nkey = "{CLUSTER_KEY.decode()}"\n'
        "interval = 0.2\ntimeout = 30\nfall = 2\nrise = 2\n"
        f'[[cluster.nodes]]\nid = "node1"\naddress = "127.0.0.1:{port}"\n'
        f'[[cluster.nodes]]\nid = "node2"\naddress = "127.0.0.1:{peer}"\n'
        f'[[sites]]\nname = "videos"\nhosts = ["video.test"]\norigins = ["{origin.url}"]\n'
    )
    return cfg


async def test_a_no_cache_miss_waiting_on_another_workers_look_aside_gets_the_origins_answer(
    origin: Origin, tmp_path: Path
) -> None:
    port, admin, peer_port = free_port(), free_port(), free_port()
    members = (Member("node1", f"127.0.0.1:{port}"), Member("node2", f"127.0.0.1:{peer_port}"))
    warm, path = owned("/warm", members), owned("/v", members)
    origin.put(warm, WARM)
    origin.put(path, ORIGIN_BYTES)
    peer, release = Origin(), asyncio.Event()
    peer.put(path, ORIGIN_BYTES, headers=HELD_FRESH)  # the same bytes of "v1", as a real previous owner holds

    async def look_asides(request: web.BaseRequest, obj: Obj | None) -> web.Response | None:
        primary = f"videos|video.test|{request.raw_path}"
        got = hop.verify(CLUSTER_KEY, request.headers.getall(hop.FIELD, []), "GET", primary, time.time())
        if not isinstance(got, hop.Hop) or not got.lookaside or obj is None:
            return web.Response(status=504, text="not held\n")
        if peer.hits[request.raw_path] == 1:
            await release.wait()
        return None

    peer.on_request = look_asides
    await peer.start(peer_port)
    cfg = config(tmp_path, origin, port, admin, peer_port)
    try:
        async with (
            edge_process("serve", "--config", str(cfg), ready=READY) as proc,
            aiohttp.ClientSession() as s,
            one_per_worker(port, proc.pid, warm, WARM) as (a, b),
        ):
            waits = await collapsed(s, admin)
            plain = asyncio.ensure_future(a.get(path))
            async with asyncio.timeout(20):
                while peer.hits[path] < 1:  # noqa: ASYNC110  (another process: polled)
                    await asyncio.sleep(0.02)
                demanding = asyncio.ensure_future(b.get(path, "Cache-Control: no-cache\r\n"))
                while await collapsed(s, admin) == waits and not demanding.done():  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            release.set()
            async with asyncio.timeout(30):
                (s1, h1, b1), (s2, h2, b2) = await asyncio.gather(plain, demanding)
            assert (s1, b1 == ORIGIN_BYTES, int(h1["age"]) >= 50) == (200, True, True)  # the peer's: fresh for it
            assert h1["cache-status"] == 'edgecache; fwd=uri-miss; stored; detail="peer-lookaside"'
            assert (s2, b2 == ORIGIN_BYTES, int(h2["age"]) < 10) == (200, True, True), h2
            assert (peer.hits[path], origin.hits[path]) == (2, 1)  # the no-cache miss's own look-aside, refused
    finally:
        await peer.stop()
