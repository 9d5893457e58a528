"""Purge through the authenticated admin API, across a real 3-node cluster."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edgecache.admin.app import admin_app
from edgecache.admin.jobs import JobRunner
from edgecache.admin.prefetch import prefetch_routes
from edgecache.admin.purge import admin_tokens, purge_handler, purge_routes
from edgecache.config import ClusterSettings, Listen, Site, Token
from edgecache.core.ring import Member
from edgecache.sites import TCPListener
from tests.conftest import CLUSTER_KEY, Edge, all_up, make_config, start_edge
from tests.e2e.procs import edge_process, free_port
from tests.origin import Origin

OPERATOR = "operator-secret-0123456789"
VIDEOS = "videos-provider-secret-0123"
OTHER = "other-provider-secret-01234"


@dataclass
class Node:
    edge: Edge
    admin: str
    jobs: JobRunner


@contextlib.asynccontextmanager
async def cluster(
    origin: Origin, tmp_path: Path, fast: bool = True, cluster_timeout: float = 1.0
) -> AsyncIterator[list[Node]]:
    """Three nodes in this process, on this loop; `cluster_timeout` is their cluster.timeout (how long a peer's
    check may take, and how long the loop may go unrun before a node takes itself for paused)."""
    ports, admins = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    members = tuple(
        Member(f"node{i + 1}", f"127.0.0.1:{p}", admin=f"127.0.0.1:{a}")
        for i, (p, a) in enumerate(zip(ports, admins, strict=True))
    )
    tokens = (
        Token("ops", OPERATOR, "operator"),
        Token("videos", VIDEOS, "provider", ("videos",)),
        Token("other", OTHER, "provider", ("other",)),
    )
    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        for i in range(3):
            cfg = make_config(tmp_path / f"n{i}", [origin.url])
            other = Site(name="other", hosts=("other.test",), origins=(origin.url,))
            cfg = replace(
                cfg,
                listen=(Listen("127.0.0.1", ports[i]),),
                sites=(*cfg.sites, other),
                cluster=ClusterSettings(
                    self_id=f"node{i + 1}", key=CLUSTER_KEY, nodes=members, interval=0.2, timeout=cluster_timeout
                ),
                tokens=tokens,
                fast_path=fast,
            )
            edge = await stack.enter_async_context(start_edge(cfg))
            jobs = JobRunner(edge.node.store.disk, edge.url)
            await jobs.start()
            stack.push_async_callback(jobs.close)
            current = lambda c=cfg: c  # noqa: E731
            purger = purge_handler(current, edge.node.store, edge.node.cluster)  # as server._start_admin
            app = admin_app(
                edge.node.ready,
                lambda c=cfg: admin_tokens(c),  # as server._start_admin: the nodes pass purges on with their own
                edge.node.shared.ring_view,
                purger,
                prefetch_routes(current, jobs) + purge_routes(current, edge.node.store),
            )
            runner = web.AppRunner(app)
            await runner.setup()
            await TCPListener(runner, "127.0.0.1", admins[i]).start()
            stack.push_async_callback(runner.cleanup)
            nodes.append(Node(edge, f"http://127.0.0.1:{admins[i]}", jobs))
        # Once every node sees every other up: a node probed before it listened is down until its next good checks,
        # and a request sent meanwhile goes to another owner (test_prefetch's owners failed so under load).
        await all_up([n.edge for n in nodes])
        yield nodes


async def heard(nodes: list[Node]) -> None:
    """Until each node's purge log rounds have heard every peer has every purge applied there. Until then a node
    that neither made a purge nor owns an object it covers may fetch it itself rather than forward it to an owner
    it does not know has the purge (cluster.behind): these tests count the owner's origin requests."""
    async with asyncio.timeout(10):
        for node in nodes:
            sync, view = node.edge.node.purge_sync, node.edge.node.cluster
            assert sync is not None
            assert view is not None
            peers = [m.id for m in view.ring.members if m.id != view.self_id]
            async with sync.rounds:
                await sync.rounds.wait_for(lambda s=sync, p=peers: all(s.has_ours(m) for m in p))


async def purge(node: Node, body: object, token: str | None = OPERATOR) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.post(f"{node.admin}/purge", json=body, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def test_purge_url_prefix_and_site_on_every_node(origin: Origin, tmp_path: Path) -> None:
    paths = ["/dir/a", "/dir/b", "/dir/sub/c", "/other/d"]
    for p in paths:
        origin.put(p, p.encode())
    async with cluster(origin, tmp_path) as nodes:

        async def warm_all() -> None:
            for n in nodes:
                for p in paths:
                    assert (await n.edge.get(p))[2] == p.encode()

        await warm_all()
        assert all(origin.hits[p] == 1 for p in paths)
        status, answer = await purge(nodes[0], {"url": "http://video.test/dir/a"})
        assert (status, answer["nodes"], answer["confirmed"], answer["failed"]) == (200, 3, 3, [])
        await heard(nodes)
        await warm_all()
        assert [origin.hits[p] for p in paths] == [2, 1, 1, 1]
        status, answer = await purge(nodes[1], {"prefix": "http://video.test/dir/"}, VIDEOS)
        assert (status, answer["confirmed"]) == (200, 3)
        await heard(nodes)
        await warm_all()
        assert [origin.hits[p] for p in paths] == [3, 2, 2, 1]
        status, _ = await purge(nodes[2], {"site": "videos"})
        assert status == 200
        await heard(nodes)
        await warm_all()
        assert [origin.hits[p] for p in paths] == [4, 3, 3, 2]


async def test_soft_purge_revalidates_instead_of_refetching(origin: Origin, tmp_path: Path) -> None:
    origin.put("/soft", b"keep me")
    async with cluster(origin, tmp_path) as nodes:
        assert (await nodes[0].edge.get("/soft"))[2] == b"keep me"
        status, _ = await purge(nodes[0], {"url": "http://video.test/soft", "soft": True})
        assert status == 200
        status, headers, body = await nodes[0].edge.get("/soft")
        assert (status, body) == (200, b"keep me")
        assert "fwd-status=304" in headers["Cache-Status"]
        assert origin.seen[-1].headers.get("If-None-Match") == '"v1"'


async def test_a_soft_purge_while_a_fill_is_at_the_origin_makes_its_answer_stale(
    origin: Origin, tmp_path: Path
) -> None:
    """The origin answered that fill before the purge: the next request revalidates it. It was judged by when the
    answer arrived, after the purge, and served as fresh (max-age=3600) with the bytes the purge was for."""
    origin.put("/race", b"old bytes")
    async with cluster(origin, tmp_path) as nodes:
        origin.gate = asyncio.Event()
        first = asyncio.create_task(nodes[0].edge.get("/race"))
        await origin.wait_for_requests(1)  # the fill's request is at the origin, its answer (old bytes) held
        origin.put("/race", b"new bytes", etag='"v2"')
        status, _ = await purge(nodes[1], {"url": "http://video.test/race", "soft": True})
        assert status == 200
        await heard(nodes)
        origin.gate.set()
        assert (await first)[2] == b"old bytes"  # asked before the purge
        for _ in range(2):
            status, headers, body = await nodes[2].edge.get("/race")
            assert (status, body) == (200, b"new bytes"), headers
    assert origin.hits["/race"] == 2
    assert origin.seen[-1].headers.get("If-None-Match") == '"v1"'  # revalidated, not fetched blind


async def test_a_request_after_a_soft_purge_does_not_join_a_fill_asked_before_it(
    origin: Origin, tmp_path: Path
) -> None:
    """The fill at the origin when the soft purge came brings the bytes the purge was for. A request after the purge
    joined it and got them; it has a fill of its own now, and the new bytes."""
    origin.put("/joined", b"old bytes")
    async with cluster(origin, tmp_path) as nodes:
        for fill_and_join in range(2):  # twice: a second object, on a cluster that has done it once
            path = f"/joined{fill_and_join}"
            origin.put(path, b"old bytes")
            origin.gate = asyncio.Event()
            first = asyncio.create_task(nodes[0].edge.get(path))
            try:
                async with asyncio.timeout(10):
                    await origin.wait_for_requests(len(origin.seen) + 1)  # its head held at the origin
                    origin.put(path, b"new bytes", etag='"v2"')
                    status, _ = await purge(nodes[1], {"url": f"http://video.test{path}", "soft": True})
                    assert status == 200
                    await heard(nodes)
                    second = asyncio.create_task(nodes[2].edge.get(path))
                    await origin.wait_for_requests(len(origin.seen) + 1)  # its own fill
            finally:
                origin.gate.set()
            assert (await first)[2] == b"old bytes"  # asked before the purge
            assert (await second)[::2] == (200, b"new bytes")
            assert (await nodes[0].edge.get(path))[::2] == (200, b"new bytes")
            assert origin.hits[path] == 2


async def test_a_late_304_for_a_copy_replaced_meanwhile_leaves_the_new_copy_as_it_is(
    origin: Origin, tmp_path: Path
) -> None:
    """A revalidation of v1 held at the origin; a soft purge; a request after it has a fill of its own, which stores
    v2; then the held revalidation's 304 (about v1) comes back. Merged into the stored copy, it gave the v2 bytes
    v1's ETag and the time before the purge, so they were revalidated again; now it is for its own readers only."""
    stale = {"Cache-Control": "public, max-age=0"}
    origin.put("/reval", b"version one", headers=stale)
    release = asyncio.Event()
    held: list[str] = []

    async def hold_first_revalidation(request: web.BaseRequest, obj: object) -> web.StreamResponse | None:
        if request.headers.get("If-None-Match") != '"v1"' or held:
            return None
        held.append(request.path)
        await release.wait()
        return web.Response(status=304, headers={"ETag": '"v1"', **stale})

    async with cluster(origin, tmp_path) as nodes:
        assert (await nodes[0].edge.get("/reval"))[::2] == (200, b"version one")
        origin.on_request = hold_first_revalidation
        first = asyncio.create_task(nodes[0].edge.get("/reval"))  # stale: revalidated, and held
        try:
            async with asyncio.timeout(10):
                await origin.wait_for_requests(2)
                origin.put("/reval", b"version two", etag='"v2"', headers=stale)
                assert (await purge(nodes[1], {"url": "http://video.test/reval", "soft": True}))[0] == 200
                await heard(nodes)
                status, headers, body = await nodes[2].edge.get("/reval")
                assert (status, headers["ETag"], body) == (200, '"v2"', b"version two")
        finally:
            release.set()
        status, headers, body = await first
        assert (status, headers["ETag"], body) in ((200, '"v1"', b"version one"), (200, '"v2"', b"version two"))
        for node in nodes:  # the stored copy, stale but allowed: v2's bytes under v2's ETag, no origin request
            status, headers, body = await node.edge.get("/reval", **{"Cache-Control": "max-stale=600"})
            assert (status, headers["ETag"], body) == (200, '"v2"', b"version two")
    assert origin.hits["/reval"] == 3


@pytest.mark.parametrize(
    ("body", "token", "status", "error"),
    [
        ({"url": "http://video.test/x"}, None, 401, "a bearer token is required"),
        ({"url": "http://video.test/x"}, "wrong-token-wrong-token", 401, "invalid token"),
        ({"url": "http://video.test/x"}, OTHER, 403, "token 'other' may act on its own sites only"),
        ({"site": "other"}, VIDEOS, 403, "token 'videos' may act on its own sites only"),
        ({"url": "http://unknown.test/x"}, VIDEOS, 403, "token 'videos' may act on its own sites only"),
        ({"site": "nope"}, VIDEOS, 403, "token 'videos' may act on its own sites only"),
        ({"url": "http://unknown.test/x"}, OPERATOR, 400, "url: no site is configured for host 'unknown.test'"),
        ({"url": "http://video.test/a b"}, OPERATOR, 400, "url: request target has control characters or spaces"),
        (
            {"prefix": "http://video.test/dir"},
            OPERATOR,
            400,
            "a prefix is a directory: it ends with '/' and has no query",
        ),
        ({"url": "x", "site": "videos"}, OPERATOR, 400, "give exactly one of url, prefix or site"),
        ([1, 2], OPERATOR, 400, "expected a JSON object with one of url, prefix or site"),
        ({"site": "nope"}, OPERATOR, 400, "no site named 'nope'"),
    ],
)
async def test_bad_purges_get_a_clear_answer_and_purge_nothing(
    origin: Origin, tmp_path: Path, body: object, token: str | None, status: int, error: str
) -> None:
    origin.put("/x", b"x")
    async with cluster(origin, tmp_path) as nodes:
        await nodes[0].edge.get("/x")
        got, answer = await purge(nodes[0], body, token)
        assert (got, answer["error"]) == (status, error)
        assert (await nodes[0].edge.get("/x"))[1]["Cache-Status"].startswith("edgecache; hit")
        assert origin.hits["/x"] == 1


async def test_garbage_bodies(origin: Origin, tmp_path: Path) -> None:
    async with cluster(origin, tmp_path) as nodes, aiohttp.ClientSession() as s:
        auth = {"Authorization": f"Bearer {OPERATOR}"}
        async with s.post(f"{nodes[0].admin}/purge", data=b"{not json", headers=auth) as r:
            assert r.status == 400
            assert (await r.json())["error"] == "body is not JSON: JSONDecodeError"
        async with s.post(f"{nodes[0].admin}/purge", data=io.BytesIO(b"\xff" * (2 * 1024 * 1024)), headers=auth) as r:
            assert r.status == 413


async def test_purge_command_line(origin: Origin, tmp_path: Path) -> None:
    import asyncio
    import json
    import sys

    from tests.e2e.procs import ROOT

    origin.put("/cli", b"c")
    port, admin = free_port(), free_port()
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[[admin.tokens]]\nname = "ops"\ntoken = "{OPERATOR}"\nrole = "operator"\n'
        f'[cache]\ndir = "{tmp_path / "c"}"\ndisk = "64MiB"\n'
        f'[[sites]]\nname = "videos"\nhosts = ["video.test"]\norigins = ["{origin.url}"]\n'
    )
    # the admin listener starts last
    ready = {b"admin listening on": 1}
    async with edge_process("serve", "--config", str(cfg), ready=ready), aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.get(f"http://127.0.0.1:{port}/cli", headers={"Host": "video.test"}) as r:
                assert await r.read() == b"c"
        assert origin.hits["/cli"] == 1
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgecache", "purge", "http://video.test/cli", "--config", str(cfg),
            "--token", OPERATOR, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(cli.communicate(), 60)
        assert cli.returncode == 0
        assert json.loads(out)["confirmed"] == 1
        async with s.get(f"http://127.0.0.1:{port}/cli", headers={"Host": "video.test"}) as r:
            assert "fwd=uri-miss" in r.headers["Cache-Status"]
        assert origin.hits["/cli"] == 2
        bad = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgecache", "purge", "--site", "videos", "--config", str(cfg), "--token",
            "nope-nope-nope-nope", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(bad.communicate(), 60)
        assert bad.returncode == 1
        assert json.loads(out)["error"] == "invalid token"
