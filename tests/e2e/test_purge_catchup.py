"""Purges that are never missed: a node that was stopped or cut off while a purge was made catches up before it
serves from cache, and DNS membership passes purges to every node DNS lists.

Real in-process clusters on loopback, with the admin API as the server builds it (server._start_admin). A
partition is real too: every node reaches every other node's admin API through a relay of its own, and cutting
a node's relays (both ways) cuts it off. The origin changes the object (new bytes, new ETag) after the purge:
any pre-purge byte served would show.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from time import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edgecache.cluster.view import ClusterView
from edgecache.config import ClusterSettings, Config, Listen, Token
from edgecache.core.keys import make_key
from edgecache.core.ring import Member, Ring
from edgecache.server import _start_admin
from edgecache.sites import TCPListener
from tests.conftest import CLUSTER_KEY, Edge, make_config, start_edge, views_settled
from tests.e2e.procs import descendants, edge_process, free_port
from tests.e2e.test_workers import bodies
from tests.origin import Origin

OPERATOR = "operator-secret-0123456789"
PROVIDER = "videos-provider-secret-0123"
OLD, NEW = b"before the purge " * 1000, b"after the purge! " * 1000
WAIT = 20.0  # bound on every wait for the cluster to settle (the health checks run every 0.1 s)


async def closed(writers: set[asyncio.StreamWriter]) -> None:
    """Close `writers` and wait until their sockets are: one still closing when the test's loop ends is reported as
    an unclosed socket (a ResourceWarning, an error here) in whichever test comes next."""
    for w in writers:
        w.close()
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)


class Relay:
    """127.0.0.1:port -> 127.0.0.1:target. cut(): refuse and drop every connection (a partition); heal().
    freeze(): drop every connection, then take new ones and answer nothing (a node that hangs), keeping what
    each connection's first read gave in `heard`.

    A connection is dropped too when it was accepted before a cut but is handled after it, or was still
    connecting to its target when the relay was cut or frozen: such a connection got through a partition (a node
    read the purge log of a peer it was cut off from, on a loaded machine: test_purge_peers and test_purge_forward
    failed so)."""

    def __init__(self, target: int) -> None:
        self.port, self.target = free_port(), target
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.frozen = False
        self.heard: list[bytes] = []
        self._cuts = 0  # cuts so far: a connection accepted before the last one is dropped

    def freeze(self) -> None:
        self.frozen = True
        for w in self._writers:
            w.close()

    async def heal(self) -> None:
        self._server = await asyncio.start_server(partial(self._pipe, self._cuts), "127.0.0.1", self.port)

    async def cut(self) -> None:
        self._cuts += 1
        if self._server is not None:
            self._server.close()
            await closed(self._writers)
            await self._server.wait_closed()
            self._server = None

    async def _pipe(self, cuts: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if cuts != self._cuts:
            writer.close()
            return
        if self.frozen:
            self._writers.add(writer)
            with contextlib.suppress(OSError):
                self.heard.append(await reader.read(65536))
                while await reader.read(65536):
                    pass
            self._writers.discard(writer)
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        if cuts != self._cuts or self.frozen:  # cut or frozen while it connected
            writer.close()
            up_writer.close()
            return
        self._writers |= {writer, up_writer}

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        self._writers -= {writer, up_writer}


@dataclass
class Running:
    edge: Edge
    admin: web.AppRunner
    stack: contextlib.AsyncExitStack


@dataclass
class Cluster:
    configs: list[Config]
    relays: dict[tuple[int, int], Relay]  # (from, to): node `from` reaches `to`'s admin API through it
    running: dict[int, Running] = field(default_factory=dict)

    def edge(self, i: int) -> Edge:
        return self.running[i].edge

    async def start(self, i: int) -> None:
        stack = contextlib.AsyncExitStack()
        edge = await stack.enter_async_context(start_edge(self.configs[i]))
        admin = await _start_admin(edge.node, edge.runner)
        assert admin is not None
        stack.push_async_callback(admin.cleanup)
        self.running[i] = Running(edge, admin, stack)

    async def stop(self, i: int) -> None:
        await self.running.pop(i).stack.aclose()

    async def cut(self, i: int) -> None:
        for (a, b), relay in self.relays.items():
            if i in (a, b):
                await relay.cut()

    async def heal(self, i: int) -> None:
        for (a, b), relay in self.relays.items():
            if i in (a, b):
                await relay.heal()

    async def settled(self, ups: Callable[[int, str], bool] | None = None) -> None:
        """Until every running node sees the others as `ups` says (default: every running node up) and has no
        doubt about its purges left."""
        ids = {i: self.configs[i].cluster.self_id for i in self.running}  # type: ignore[union-attr]
        want = ups or (lambda _i, other: other in ids.values())
        index = {name: i for i, name in ids.items()}
        everyone = [c.cluster.self_id for c in self.configs]  # type: ignore[union-attr]

        def holds(v: ClusterView) -> bool:
            return all(v.is_up(x) == want(index[v.self_id], x) for x in everyone if x != v.self_id)

        await views_settled([run.edge for run in self.running.values()], holds, WAIT)
        async with asyncio.timeout(WAIT):
            for run in self.running.values():
                sync = getattr(run.edge.node, "purge_sync", None)  # (None on the code before purge logs)
                if sync is not None:
                    async with sync.rounds:
                        await sync.rounds.wait_for(lambda s=sync: s.caught_up() and not s.doubting)

    async def purge(self, i: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        admin = self.configs[i].admin
        headers = {"Authorization": f"Bearer {OPERATOR}"}
        async with aiohttp.ClientSession() as s, s.post(f"http://{admin}/purge", json=body, headers=headers) as r:
            return r.status, await r.json(content_type=None)

    async def close(self) -> None:
        for i in list(self.running):
            await self.stop(i)
        for relay in self.relays.values():
            await relay.cut()


@contextlib.asynccontextmanager
async def cluster(origin: Origin, tmp_path: Path, n: int = 3, fall: int = 2) -> AsyncIterator[Cluster]:
    ports, admins = [free_port() for _ in range(n)], [free_port() for _ in range(n)]
    relays = {(a, b): Relay(admins[b]) for a in range(n) for b in range(n) if a != b}
    configs = []
    for i in range(n):
        members = tuple(
            Member(f"node{j}", f"127.0.0.1:{ports[j]}", admin=f"127.0.0.1:{admins[j] if j == i else relays[i, j].port}")
            for j in range(n)
        )
        cfg = make_config(tmp_path / f"n{i}", [origin.url])
        settings = ClusterSettings(f"node{i}", key=CLUSTER_KEY, nodes=members, interval=0.1, timeout=1.0, fall=fall)
        configs.append(
            replace(
                cfg,
                listen=(Listen("127.0.0.1", ports[i]),),
                admin=Listen("127.0.0.1", admins[i]),
                cluster=settings,
                tokens=(Token("ops", OPERATOR, "operator"), Token("videos", PROVIDER, "provider", ("videos",))),
            )
        )
    c = Cluster(configs, relays)
    try:
        for relay in relays.values():
            await relay.heal()
        for i in range(n):
            await c.start(i)
        await c.settled()
        yield c
    finally:
        await c.close()


def owner(c: Cluster, path: str) -> int:
    primary = make_key("videos", "video.test", path, ("*",)).primary
    found = Ring.of(c.configs[0].cluster.nodes).owner(primary)  # type: ignore[union-attr]
    assert found is not None
    return int(found.id.removeprefix("node"))


async def body_via(c: Cluster, i: int, path: str) -> bytes:
    status, _, body = await c.edge(i).get(path)
    assert status == 200
    return body


async def warm(c: Cluster, origin: Origin, path: str) -> None:
    origin.put(path, OLD, etag='"v1"')
    for i in c.running:
        assert await body_via(c, i, path) == OLD
    assert origin.hits[path] == 1


def change(origin: Origin, path: str) -> None:
    origin.put(path, NEW, etag='"v2"')


async def test_a_node_stopped_during_a_purge_catches_up_before_it_serves(origin: Origin, tmp_path: Path) -> None:
    async with cluster(origin, tmp_path) as c:
        path = "/stopped/a"
        x = owner(c, path)
        y = (x + 1) % 3
        await warm(c, origin, path)
        await c.stop(x)
        change(origin, path)
        status, answer = await c.purge(y, {"url": f"http://video.test{path}"})
        assert (status, answer["nodes"], answer["confirmed"], answer["failed"]) == (200, 3, 2, [f"node{x}"])
        await c.start(x)  # its copy of the object is on its disk, from before the purge
        assert await body_via(c, x, path) == NEW  # asked at once: it caught up before it listened
        await c.settled()
        for i in range(3):
            assert await body_via(c, i, path) == NEW
        assert origin.hits[path] == 2
        assert c.edge(x).node.store.sync.has(*answer["id"])


async def test_a_purge_does_not_wait_for_a_peer_seen_down(origin: Origin, tmp_path: Path) -> None:
    async with cluster(origin, tmp_path) as c:
        x, y = 0, 1
        for (frm, to), relay in c.relays.items():
            # x takes connections and answers nothing (its peers' health checks time out), and reaches no peer
            # either. A node that asks a peer's purge log is told of its purges (ClusterView.heard_from): with x's
            # incoming side alone cut off, a one-way partition, x's next round tells its peers it takes purges, and a
            # purge asks it and waits up to cluster.timeout (as the test below waits for a peer that does not answer).
            if to == x:
                relay.freeze()
            elif frm == x:
                await relay.cut()
        ids = [f"node{i}" for i in range(3)]
        await c.settled(lambda i, other: i != x and other != ids[x])  # x sees no peer up, nor they x
        told = len(c.relays[y, x].heard)
        status, answer = await c.purge(y, {"url": "http://video.test/a"})
        assert (status, answer["nodes"], answer["confirmed"], answer["failed"]) == (200, 3, 2, [ids[x]])
        assert not [h for h in c.relays[y, x].heard[told:] if h.startswith(b"POST /purge HTTP/1.1")]  # not even asked


async def test_a_purge_waits_for_a_peer_that_does_not_answer_no_longer_than_the_cluster_timeout(
    origin: Origin, tmp_path: Path
) -> None:
    # fall=1000: the hung peer stays up in the health view, so the purge asks it.
    async with cluster(origin, tmp_path, fall=1000) as c:
        x, y = 0, 1
        c.relays[y, x].freeze()
        async with asyncio.timeout(4):  # cluster.timeout is 1 s; a wait of its own (it was 5 s) would fail this
            status, answer = await c.purge(y, {"url": "http://video.test/a"})
        assert (status, answer["confirmed"], answer["failed"]) == (200, 2, [f"node{x}"])
        assert [h for h in c.relays[y, x].heard if h.startswith(b"POST /purge HTTP/1.1")]  # it was asked


async def test_a_node_that_cannot_catch_up_revalidates_what_it_stored_before(origin: Origin, tmp_path: Path) -> None:
    # fall=50: its peers count as up for 5 s after it starts, so it knows it may be behind all that time.
    async with cluster(origin, tmp_path, fall=50) as c:
        path = "/doubt/a"
        x = owner(c, path)
        y = (x + 1) % 3
        await warm(c, origin, path)
        await c.stop(x)
        change(origin, path)
        status, answer = await c.purge(y, {"url": f"http://video.test{path}"})
        assert (status, answer["failed"]) == (200, [f"node{x}"])
        await c.cut(x)
        await c.start(x)  # no peer to ask: its copy from before may be one a purge removed
        assert await body_via(c, x, path) == NEW
        assert origin.hits[path] == 2
        assert origin.seen[-1].headers.get("If-None-Match") == '"v1"'  # revalidated, not served from cache
        await c.heal(x)
        await c.settled()
        # The purge arrives: what it stored meanwhile is purged too (a copy more from origin, never a wrong one).
        assert await body_via(c, x, path) == NEW
        assert origin.hits[path] == 3
        assert c.edge(x).node.store.sync.has(*answer["id"])


async def test_a_node_cut_off_during_a_purge_catches_up_when_it_is_back(origin: Origin, tmp_path: Path) -> None:
    async with cluster(origin, tmp_path) as c:
        path = "/partitioned/a"
        x = owner(c, path)
        y = (x + 1) % 3
        await warm(c, origin, path)
        await c.cut(x)
        ids = [f"node{i}" for i in range(3)]
        await c.settled(lambda i, other: i != x and other != ids[x])  # x sees no one, and no one sees x
        change(origin, path)
        status, answer = await c.purge(y, {"prefix": "http://video.test/partitioned/"})
        assert (status, answer["confirmed"], answer["failed"]) == (200, 2, [f"node{x}"])
        await c.heal(x)
        await c.settled()
        for i in range(3):
            assert await body_via(c, i, path) == NEW
        assert origin.hits[path] == 2


async def test_purges_survive_a_restart_and_are_passed_on_from_the_log(origin: Origin, tmp_path: Path) -> None:
    async with cluster(origin, tmp_path) as c:
        path = "/restarted/a"
        x = owner(c, path)
        y, z = (x + 1) % 3, (x + 2) % 3
        await warm(c, origin, path)
        await c.stop(x)
        change(origin, path)
        status, answer = await c.purge(y, {"url": f"http://video.test{path}", "soft": True})
        assert (status, answer["confirmed"]) == (200, 2)
        await c.stop(y)
        await c.stop(z)
        # Only y's log can tell x of the purge now: y is back from its own disk, z stays down.
        await c.start(y)
        await c.start(x)
        await c.settled(lambda _i, other: other != f"node{z}")
        assert await body_via(c, x, path) == NEW
        assert await body_via(c, y, path) == NEW
        assert origin.hits[path] == 2
        assert c.edge(x).node.store.sync.has(*answer["id"])
        # y numbers its next purge after the ones its log holds: never a number a peer has seen for another purge.
        status, again = await c.purge(y, {"url": f"http://video.test{path}"})
        assert (status, again["id"]) == (200, [answer["id"][0], answer["id"][1] + 1])


@pytest.fixture
async def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Answers for names in it, from the loop's getaddrinfo (where the cluster's DNS lookups go); every other
    name resolves as ever. There is no DNS server on loopback to list three nodes."""
    names: dict[str, list[str]] = {}
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, int(port))) for ip in names[host]]
        return await real(host, port, *args, **kw)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return names


async def test_dns_membership_passes_purges_to_every_node(
    origin: Origin, tmp_path: Path, fake_dns: dict[str, list[str]]
) -> None:
    ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    fake_dns["peers.edge.test"] = ips
    port, admin = free_port(), free_port()
    configs = []
    for i, ip in enumerate(ips):
        cfg = make_config(tmp_path / f"n{i}", [origin.url])
        # fall=20: the three nodes share this test's one loop, and on a loaded machine two failed checks (fall=2)
        # could take a live peer down; a node then stands in for the owner and asks the origin itself (seen once:
        # 3 origin hits, not 2). A stopped node's checks are refused at once: 2 s to take it down.
        settings = ClusterSettings(
            f"{ip}:{port}", key=CLUSTER_KEY, dns=f"peers.edge.test:{port}", dns_interval=0.1, interval=0.1, fall=20
        )
        configs.append(
            replace(
                cfg,
                listen=(Listen(ip, port),),
                admin=Listen(ip, admin),
                cluster=settings,
                tokens=(Token("ops", OPERATOR, "operator"),),
            )
        )
    c = Cluster(configs, {})
    try:
        for i in range(3):
            await c.start(i)
        await c.settled()
        path = "/dns/a"
        members = Ring.of(Member(f"{ip}:{port}", f"{ip}:{port}") for ip in ips)
        found = members.owner(make_key("videos", "video.test", path, ("*",)).primary)
        assert found is not None
        x = ips.index(found.id.rpartition(":")[0])
        y = (x + 1) % 3
        origin.put(path, OLD, etag='"v1"')
        async with aiohttp.ClientSession() as s:

            async def via(i: int) -> bytes:
                async with s.get(f"http://{ips[i]}:{port}{path}", headers={"Host": "video.test"}) as r:
                    assert r.status == 200
                    return await r.read()

            for i in range(3):
                assert await via(i) == OLD
            assert origin.hits[path] == 1
            change(origin, path)
            status, answer = await c.purge(y, {"url": f"http://video.test{path}"})
            assert (status, answer["nodes"], answer["confirmed"], answer["failed"]) == (200, 3, 3, [])
            for i in range(3):
                assert await via(i) == NEW
            assert origin.hits[path] == 2
            await c.stop(x)
            await c.settled(lambda _i, other: other != f"{ips[x]}:{port}")
            status, answer = await c.purge(y, {"url": f"http://video.test{path}"})
            assert (status, answer["nodes"], answer["confirmed"], answer["failed"]) == (200, 3, 2, [f"{ips[x]}:{port}"])
    finally:
        await c.close()


async def test_the_purge_log_is_read_by_nodes_and_operators_and_bad_input_gets_400(
    origin: Origin, tmp_path: Path
) -> None:
    async with cluster(origin, tmp_path, n=2) as c:
        status, answer = await c.purge(0, {"prefix": "http://video.test/d/"})
        assert (status, answer["confirmed"]) == (200, 2)
        origin_id, number = answer["id"]
        from edgecache.core import nodeauth  # here: the other tests also run on the code before it
        from edgecache.core.purge import peer_token

        admin = f"http://{c.configs[1].admin}"
        peer = "(signed as a node)"

        async def call(path: str, token: str | None, body: object) -> tuple[int, dict[str, Any]]:
            raw = json.dumps(body).encode()
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            if token == peer:
                headers = {"Authorization": nodeauth.authorization(peer_token(CLUSTER_KEY), "POST", path, raw, time())}
            headers["Content-Type"] = "application/json"
            async with aiohttp.ClientSession() as s, s.post(admin + path, data=raw, headers=headers) as r:
                return r.status, await r.json(content_type=None)

        # What node1 keeps is what node0 numbered: a node that has none of it gets it, one that has it nothing.
        expected = [origin_id, number, "prefix", "videos", "video.test", "/d/", False]
        for token in (peer, OPERATOR):
            assert await call("/purges/after", token, {"vector": {}}) == (
                200,
                {
                    "node": "node1",
                    "vector": {origin_id: number},
                    "entries": [expected],
                    "more": False,
                    "gap": False,
                    "me": "",  # node1 numbered none; node0's origin is not its own
                    "retired": {},
                },
            )
        status, got = await call("/purges/after", peer, {"vector": {origin_id: number}})
        assert (status, got["entries"]) == (200, [])
        assert await call("/purges/after", None, {"vector": {}}) == (401, {"error": "a bearer token is required"})
        # The nodes' token is never sent: presented as a bearer, it is refused.
        assert await call("/purges/after", peer_token(CLUSTER_KEY), {"vector": {}}) == (401, {"error": "invalid token"})
        assert await call("/purges/after", PROVIDER, {"vector": {}}) == (
            403,
            {"error": "only the cluster's nodes and operators may read the purge log"},
        )
        for bad in ({"vector": {origin_id: -1}}, {"vector": [1]}, [1], {}, {"vector": {}, "retired": [1]}):
            assert await call("/purges/after", peer, bad) == (
                400,
                {"error": 'expected {"vector": {origin: number, ...}, "retired": [origin, ...]}'},
            )
        # The nodes' token reads the log and nothing else: it purges no site.
        assert (await call("/purge", peer, {"site": "videos"}))[0] == 403
        for bad_id in ([origin_id], [origin_id, 0], "x", [1, 2]):
            status, got = await call("/purge", peer, {"site": "videos", "local": True, "id": bad_id})
            assert (status, got) == (400, {"error": "id must be [origin, number] as a node sends it"})
        # A client never numbers a purge: one taken here as node0's next would drop node0's real one when it came.
        for token in (OPERATOR, PROVIDER):
            for forged in ({"id": [origin_id, number + 1]}, {"local": True}, {"local": True, "id": [origin_id, 9]}):
                status, got = await call("/purge", token, {"site": "videos", **forged})
                assert (status, got) == (400, {"error": "id and local are the cluster's nodes' own"})
        assert c.edge(1).node.store.sync.vector == {origin_id: number}
        status, answer = await c.purge(0, {"prefix": "http://video.test/d/"})  # node0's next reaches node1
        assert (status, answer["confirmed"], answer["id"]) == (200, 2, [origin_id, number + 1])
        assert c.edge(1).node.store.sync.vector == {origin_id: number + 1}


async def test_a_peer_is_asked_a_bounded_number_of_times_and_read_to_a_bounded_size(
    origin: Origin, tmp_path: Path
) -> None:
    from edgecache.cluster.purgesync import (
        MAX_ANSWER,
        MAX_BATCHES,
    )  # here: the other tests also run on the code before it

    asked: list[int] = []
    mode = {"answer": "endless"}

    async def after(request: web.Request) -> web.StreamResponse:
        asked.append(1)
        if mode["answer"] == "endless":  # always one more entry, and more after it
            entry = ["peer~1", len(asked), "url", "videos", "video.test", f"/e{len(asked)}", False]
            return web.json_response(
                {"node": "peer", "vector": {"peer~1": 10_000}, "entries": [entry], "more": True, "gap": False}
            )
        if mode["answer"] == "huge":
            return web.Response(body=b" " * (MAX_ANSWER + 1), content_type="application/json")
        response = web.StreamResponse()  # chunked: no length to judge it by
        await response.prepare(request)
        await response.write(b'{"node": "peer", "vector": {}, "entries": [], "more": false, "gap": false}')
        return response

    app = web.Application()
    app.router.add_post("/purges/after", after)
    runner = web.AppRunner(app)
    await runner.setup()
    peer_admin = free_port()
    await TCPListener(runner, "127.0.0.1", peer_admin).start()
    try:
        members = (
            Member("node0", f"127.0.0.1:{free_port()}"),
            Member("peer", f"127.0.0.1:{free_port()}", admin=f"127.0.0.1:{peer_admin}"),
        )
        settings = ClusterSettings("node0", key=CLUSTER_KEY, nodes=members, interval=3600.0, fall=1000)
        cfg = replace(make_config(tmp_path / "n0", [origin.url]), cluster=settings)
        async with start_edge(cfg) as edge:
            sync = edge.node.purge_sync
            assert sync is not None
            assert len(asked) == MAX_BATCHES  # the round before it listened: it took as many answers as it may
            assert sync.store.sync.vector == {"peer~1": MAX_BATCHES}
            assert sync.doubting  # the peer has more: not caught up, so its cache is still doubted
            for answer in ("huge", "chunked"):
                mode["answer"] = answer
                asked.clear()
                await sync.round()
                assert len(asked) == 1
                assert sync.store.sync.vector == {"peer~1": MAX_BATCHES}
                assert sync.doubting
    finally:
        await runner.cleanup()


def process_config(
    i: int,
    ports: list[int],
    admins: list[int],
    origin: Origin,
    tmp: Path,
    *,
    workers: int = 2,
    interval: float = 0.2,
    fall: int = 2,
    rise: int = 2,
) -> Path:
    """Node `i`'s config file; `admins`: where it reaches each node's admin listener (its own is where it listens)."""
    nodes = "".join(
        f'[[cluster.nodes]]\nid = "node{j}"\naddress = "127.0.0.1:{p}"\nadmin = "127.0.0.1:{a}"\n'
        for j, (p, a) in enumerate(zip(ports, admins, strict=True))
    )
    path = tmp / f"node{i}.toml"
    path.write_text(
        f'[server]\nlisten = ["127.0.0.1:{ports[i]}"]\nworkers = {workers}\n'
        f'[admin]\nlisten = "127.0.0.1:{admins[i]}"\n'
        f'[[admin.tokens]]\nname = "ops"\ntoken = "{OPERATOR}"\nrole = "operator"\n'
        f'[cache]\ndir = "{tmp / f"c{i}"}"\ndisk = "64MiB"\nmemory = "16MiB"\n'
        f'[cluster]\nself = "node{i}"\nkey = "{CLUSTER_KEY.decode()}"\ninterval = {interval}\ntimeout = 1.0\n'
        f"fall = {fall}\nrise = {rise}\n"
        f'{nodes}[[sites]]\nname = "videos"\nhosts = ["video.test"]\norigins = ["{origin.url}"]\n'
    )
    return path


def two_nodes(origin: Origin, tmp: Path, path: str) -> tuple[list[int], list[int], list[str], int, int]:
    """Two nodes' client and admin ports and config files, the index of the owner of `path` and of the other."""
    ports, admins = [free_port() for _ in range(2)], [free_port() for _ in range(2)]
    configs = [str(process_config(i, ports, admins, origin, tmp)) for i in range(2)]
    primary = make_key("videos", "video.test", path, ("*",)).primary
    owner = Ring.of(Member(f"node{i}", f"127.0.0.1:{ports[i]}") for i in range(2)).owner(primary)
    assert owner is not None
    x = int(owner.id.removeprefix("node"))
    return ports, admins, configs, x, 1 - x


async def test_every_worker_of_a_returning_node_serves_only_post_purge_bytes(origin: Origin, tmp_path: Path) -> None:
    """Real processes of two workers each: worker 0 takes the purges from the peer and writes the log, the other
    worker doubts until it reads them there; neither serves the copy from before the purge."""
    ports, admins, configs, x, y = two_nodes(origin, tmp_path, path := "/workers/a")
    ready = {b"admin listening on": 1, b"edgecache listening on": 2}
    caught_up = {b"w0 INFO edgecache.cluster.purgesync: purge log: caught up": 1}
    caught_up[b"w1 INFO edgecache.cluster.purgesync: purge log: caught up"] = 1
    origin.put(path, OLD, etag='"v1"')

    async with edge_process("serve", "--config", configs[y], ready=ready), aiohttp.ClientSession() as s:
        async with edge_process("serve", "--config", configs[x], ready={**ready, **caught_up}):
            assert await bodies(s, ports[x], path, 20) == {OLD}
            assert origin.hits[path] == 1
        change(origin, path)
        auth = {"Authorization": f"Bearer {OPERATOR}"}
        body = {"url": f"http://video.test{path}"}
        async with s.post(f"http://127.0.0.1:{admins[y]}/purge", json=body, headers=auth) as r:
            answer = await r.json()
        assert (r.status, answer["confirmed"], answer["failed"]) == (200, 1, [f"node{x}"])
        async with edge_process("serve", "--config", configs[x], ready={**ready, **caught_up}):
            assert await bodies(s, ports[x], path, 20) == {NEW}
            assert origin.hits[path] == 2


async def caught_up_with(proc: asyncio.subprocess.Process, peer: str) -> None:
    """Until each of the node's two workers has seen `peer` up and caught up with its purge log since (its log).

    A worker that sees a peer come up may have missed purges the peer took, and revalidates what it stored before
    (PurgeSync._peer_changed): seen up after the node stored a copy, the next request to it asked the origin again.
    Under load the owner saw its peer up 5.6 s after both had started, after its first GET (2 origin hits)."""
    assert proc.stderr is not None
    up: set[bytes] = set()
    caught_up: set[bytes] = set()
    while caught_up != {b"w0", b"w1"}:
        line = await asyncio.wait_for(proc.stderr.readline(), WAIT)
        assert line, "edgecache exited early"
        worker = line.split()[2]  # "date time wN LEVEL logger: message" (server.py)
        if f"peer {peer} is up".encode() in line:
            up.add(worker)
        elif b"purge log: caught up" in line and worker in up:
            caught_up.add(worker)


async def test_a_node_paused_while_a_purge_was_made_never_serves_the_purged_bytes(
    origin: Origin, tmp_path: Path
) -> None:
    """A node stopped (SIGSTOP: a frozen VM, a long pause) while a purge is made misses it, and sees no peer go
    down: on its own clock nothing happened. Once it runs again, it must notice the pause before it answers the
    requests that queued up meanwhile. Real processes of two workers each."""
    ports, admins, configs, x, y = two_nodes(origin, tmp_path, path := "/paused/a")
    ready = {b"admin listening on": 1, b"edgecache listening on": 2}
    origin.put(path, OLD, etag='"v1"')
    headers = {"Host": "video.test", "Connection": "close"}  # a new connection each: both workers are asked
    # The owner first: its peer starts up seeing it up (core.health), so the purge is passed on to it and waits
    # for it (cluster.timeout), as it would for a node that froze while it ran.
    async with (
        edge_process("serve", "--config", configs[x], ready=ready) as proc,
        edge_process("serve", "--config", configs[y], ready=ready),
        aiohttp.ClientSession() as s,
    ):
        await caught_up_with(proc, f"node{y}")
        for _ in range(8):
            async with s.get(f"http://127.0.0.1:{ports[x]}{path}", headers=headers) as r:
                assert (r.status, await r.read()) == (200, OLD)
        assert origin.hits[path] == 1
        frozen = [proc.pid, *descendants(proc.pid)]
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            change(origin, path)
            auth = {"Authorization": f"Bearer {OPERATOR}"}
            body = {"url": f"http://video.test{path}"}
            async with s.post(f"http://127.0.0.1:{admins[y]}/purge", json=body, headers=auth) as r:
                answer = await r.json()
            assert (r.status, answer["failed"]) == (200, [f"node{x}"])
            # Asked while it is stopped: answered once it runs again, before anything else it does.
            asked = [
                asyncio.ensure_future(s.get(f"http://127.0.0.1:{ports[x]}{path}", headers=headers)) for _ in range(4)
            ]
            await asyncio.sleep(0)  # the requests are on their way before it resumes (ordering, not a wait for time)
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        for r in await asyncio.gather(*asked):
            async with r:
                assert (r.status, await r.read()) == (200, NEW)
        for _ in range(8):
            async with s.get(f"http://127.0.0.1:{ports[x]}{path}", headers=headers) as r:
                assert (r.status, await r.read()) == (200, NEW)


async def purged_across_a_pause(
    c: Cluster, origin: Origin, path: str, monkeypatch: pytest.MonkeyPatch
) -> asyncio.Event:
    """node0's round of asking its peers reads an answer made before node1 purges `path` (which does not reach
    node0) and a pause told to node0 (PurgeSync._paused), as a frozen process holds it; returns once that round
    judged. The event lets the later rounds' answers come."""
    sync = c.edge(0).node.purge_sync
    assert sync is not None
    ask, first, later, held = sync._ask, asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def held_answer(peer: Member) -> object:
        if held.is_set():  # the rounds after it learn nothing before the test has asked
            await later.wait()
            return await ask(peer)
        answer = await ask(peer)  # made now: before the purge
        held.set()
        await first.wait()
        return answer

    monkeypatch.setattr(sync, "_ask", held_answer)
    await held.wait()
    await c.relays[1, 0].cut()  # node1's purge does not reach node0
    change(origin, path)
    status, answer = await c.purge(1, {"url": f"http://video.test{path}"})
    assert (status, answer["failed"]) == (200, ["node0"])
    sync._paused()
    async with sync.rounds:
        first.set()
        await sync.rounds.wait()  # the round that read the old answer has judged
    return later


async def test_an_answer_asked_for_before_a_pause_does_not_end_the_doubt_the_pause_began(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node paused while a round of asking its peers was under way: the peer's answer, made before the purge that
    was made during the pause, was read once the node ran again, and that round judged the node caught up. The
    doubt its pause began ended before the requests queued meanwhile were answered: with the purged bytes (the
    paused-process test above failed so once, under load). The pause is told to the node here as its watch tells
    it (PurgeSync._paused), and the answer held where a frozen process holds it."""
    async with cluster(origin, tmp_path, n=2) as c:
        path = "/held/a"
        await warm(c, origin, path)
        sync = c.edge(0).node.purge_sync
        assert sync is not None
        later = await purged_across_a_pause(c, origin, path, monkeypatch)
        assert sync.doubting
        assert await body_via(c, 0, path) == NEW
        later.set()
        await c.relays[1, 0].heal()
        assert origin.hits[path] == 2


async def test_a_pause_while_a_round_applies_an_answer_does_not_end_the_doubt_the_pause_began(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but the pause comes after the answer was read, while the node applies the purges it brought (it
    writes them: the round awaits): the round kept that answer, made before the pause's purge, as what the peer
    has, and judged the node caught up."""
    from edgecache.cluster import purgesync

    async with cluster(origin, tmp_path, n=2) as c:
        path, other = "/applying/a", "/applying/b"
        await warm(c, origin, path)
        sync = c.edge(0).node.purge_sync
        assert sync is not None
        apply, applying, go = purgesync.apply_entry, asyncio.Event(), asyncio.Event()

        async def held_apply(*args: Any) -> int:
            applying.set()
            await go.wait()
            return await apply(*args)

        monkeypatch.setattr(purgesync, "apply_entry", held_apply)
        await c.relays[1, 0].cut()  # node1's purges do not reach node0
        status, answer = await c.purge(1, {"url": f"http://video.test{other}"})
        assert (status, answer["failed"]) == (200, ["node0"])
        sync._wake.set()
        await applying.wait()  # a round read node1's answer (that purge) and applies it
        change(origin, path)
        status, answer = await c.purge(1, {"url": f"http://video.test{path}"})
        assert (status, answer["failed"]) == (200, ["node0"])
        sync._paused()
        async with sync.rounds:
            go.set()
            await sync.rounds.wait()  # the round that applied the old answer has judged
        assert sync.doubting
        assert await body_via(c, 0, path) == NEW
        await c.relays[1, 0].heal()
        assert origin.hits[path] == 2


async def test_a_peer_seen_down_before_a_pause_is_waited_for_after_it(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the first test above, with the peer seen down when the pause began (the paused-process test failed so in
    4 of 12 runs on a loaded machine: its node's probes of the peer had timed out). The round after the pause skipped
    that peer as down, judged the node caught up, and the requests queued meanwhile got the purged bytes. A peer
    seen down only by probes from before a pause is waited for until a probe after it fails, or it answers."""
    async with cluster(origin, tmp_path, n=2) as c:
        path = "/seen-down/a"
        await warm(c, origin, path)
        node = c.edge(0).node
        sync, view = node.purge_sync, node.cluster
        assert sync is not None
        assert view is not None
        view.settings = replace(view.settings, rise=10**6)  # once down, node1 stays down in node0's view
        await c.relays[0, 1].cut()
        async with asyncio.timeout(WAIT):
            await view.wait_for(lambda: not view.is_up("node1"))
        await c.relays[0, 1].heal()  # reachable again, still seen down
        later = await purged_across_a_pause(c, origin, path, monkeypatch)
        assert not view.is_up("node1")
        assert sync.doubting
        assert await body_via(c, 0, path) == NEW
        later.set()
        await c.relays[1, 0].heal()
        assert origin.hits[path] == 2


async def test_a_peer_seen_down_before_a_pause_and_after_it_ends_the_doubt_the_pause_began(
    origin: Origin, tmp_path: Path
) -> None:
    """The other side of the test above: a peer seen down before a pause that is still unreachable after it is
    not waited for for ever. The first probe of it sent after the pause fails, and the node, having heard every
    peer that is up, stops doubting: it serves what it stored from its cache again, the origin not asked."""
    async with cluster(origin, tmp_path, n=2) as c:
        path = next(p for p in (f"/dead-peer/{n}" for n in range(64)) if owner(c, p) == 0)
        await warm(c, origin, path)
        node = c.edge(0).node
        sync, view = node.purge_sync, node.cluster
        assert sync is not None
        assert view is not None
        await c.relays[0, 1].cut()  # node1 unreachable from node0 from now on: probes and asks fail
        async with asyncio.timeout(WAIT):
            await view.wait_for(lambda: not view.is_up("node1"))
        sync._paused()
        assert sync.doubting
        paused_at = view.rounds
        async with asyncio.timeout(WAIT), sync.rounds:
            await sync.rounds.wait_for(lambda: not sync.doubting)
        assert view.rounds > paused_at  # ended by a round of probes sent after the pause, not by the old verdict
        assert not view.is_up("node1")
        status, headers, body = await c.edge(0).get(path)
        assert (status, body) == (200, OLD)
        assert headers["Cache-Status"].startswith("edgecache; hit")
        assert origin.hits[path] == 1


async def test_a_refused_purge_takes_no_number(origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecache.core.purge import PurgeTable  # here: the other tests also run on the code before it

    purged = PurgeTable.purged
    monkeypatch.setattr(
        PurgeTable, "purged", lambda self, scope, gen, soft, limit=2: purged(self, scope, gen, soft, limit)
    )
    async with cluster(origin, tmp_path, n=2) as c:
        numbers = []
        for directory in ("d0", "d1", "d2", "d0"):
            status, answer = await c.purge(0, {"prefix": f"http://video.test/{directory}/"})
            numbers.append((status, answer.get("id", [None, None])[1]))
        assert numbers == [(200, 1), (200, 2), (429, None), (200, 3)]  # the table was full for d2: no number
        origin_id = answer["id"][0]
        # Both nodes have 1, 2 and 3 and nothing beyond: no number is missing, so none is waited for.
        for i in range(2):
            assert dict(c.edge(i).node.store.sync.vector) == {origin_id: 3}
            assert dict(c.edge(i).node.store.sync.above) == {}


async def test_a_member_that_leaves_the_ring_leaves_the_peer_metrics(origin: Origin, tmp_path: Path) -> None:
    """A member a reload (or DNS) takes out of the ring was still shown up by /metrics, for good: a gauge's
    value stays in the workers' shared files, so the admin API shows the members' alone."""
    async with cluster(origin, tmp_path) as c:
        admin = c.configs[0].admin
        view = c.edge(0).node.cluster
        assert view is not None
        async with aiohttp.ClientSession() as s:

            async def peer_up() -> list[str]:
                async with s.get(f"http://{admin}/metrics") as r:
                    text = await r.text()
                return sorted(line for line in text.splitlines() if line.startswith("edgecache_peer_up{"))

            # The three nodes share this process's registry, so node0 is among the peers the others set.
            up = [f'edgecache_peer_up{{peer="node{i}"}} 1.0' for i in range(3)]
            assert await peer_up() == up
            view.set_members([m for m in view.ring.members if m.id != "node2"])  # as a reload without node2
            assert await peer_up() == up[:2]
