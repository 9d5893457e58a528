"""A cluster whose membership is changed by reloading each node's config, one node after another, while viewers'
requests flow to every node: a node added (3 -> 4), a weight changed, a node retired (4 -> 3).

Real node processes on loopback, one worker each, sharing the cluster key: whatever two nodes' rings say, a
forward carries a proven hop and is served where it lands, so ring disagreement alone is never a 508 nor a
second forward. At every step a URL purge is made at one node for an object another node holds, and every node
that answers viewers must answer the new bytes at once: the node just added (which started with a copy that an
earlier purge removed in its cache dir) and the node just retired (DNS still points at it; it refuses the new
file, which no longer names it, and keeps its own) among them. A file with a bad cluster section (duplicate ids,
self missing, a weight of 0 or NaN, a short key) is refused, naming file, key and problem, and the node goes on with
the members it had. The retired node is stopped at the end: its peers no longer check it, so none sees it go down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from edgecache.core.keys import make_key
from edgecache.core.ring import Member, Ring
from tests.conftest import CLUSTER_KEY
from tests.e2e.procs import edge_process, free_port
from tests.origin import Origin

OPERATOR = "operator-secret-0123456789"
WARM = [f"/warm/{n}.bin" for n in range(24)]
OLD, NEW = b"before the purge " * 2000, b"after the purge! " * 2000
READY = {b"edgecache listening on": 1, b"admin listening on": 1}
RELOADED = b"edgecache.server: reloaded "
REFUSED = b"reload rejected, keeping the running config: "

# The roll-out's rings: each node's file names members by index, with their weights.
THREE = {0: 1.0, 1: 1.0, 2: 1.0}
FOUR = {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}
WEIGHED = {0: 1.0, 1: 3.0, 2: 1.0, 3: 1.0}
RETIRED = {0: 1.0, 1: 3.0, 3: 1.0}


# (text replaced in a good file, the problem a reload of it is refused for)
BAD_CLUSTERS = [
    (('id = "node1"', 'id = "node0"'), "cluster.nodes: node ids must be unique"),
    (('self = "node0"', 'self = "node9"'), "cluster.self: 'node9' is not one of the nodes"),
    (("weight = 3.0", "weight = 0"), "cluster.nodes[1].weight: must be positive and finite"),
    (("weight = 3.0", "weight = nan"), "cluster.nodes[1].weight: must be positive and finite"),
    ((f'key = "{CLUSTER_KEY.decode()}"', 'key = "short"'), "cluster.key: must be at least 32 printable ASCII"),
]


def body(path: str) -> bytes:
    return path.encode() * (30_000 // len(path))


@dataclass
class Node:
    i: int
    port: int = field(default_factory=free_port)
    admin: int = field(default_factory=free_port)
    lines: list[bytes] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    ring: dict[int, float] = field(default_factory=dict)  # the membership it runs with
    proc: asyncio.subprocess.Process | None = None

    @property
    def id(self) -> str:
        return f"node{self.i}"

    def count(self, needle: bytes) -> int:
        return sum(needle in line for line in self.lines)

    async def until(self, needle: bytes, n: int) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: self.count(needle) >= n), 30)

    async def drain(self) -> None:
        """Read its log for as long as it runs (a full pipe would stop it), keeping the lines."""
        assert self.proc is not None
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            async with self.changed:
                self.lines.append(line)
                self.changed.notify_all()


class Cluster:
    def __init__(self, origin: Origin, tmp: Path) -> None:
        self.origin, self.tmp = origin, tmp
        self.nodes = [Node(i) for i in range(4)]
        self.serving: list[Node] = []  # the nodes viewers reach (DNS)
        self.failures: list[str] = []
        self.answers = 0

    def config(self, node: Node, ring: dict[int, float], key: str = CLUSTER_KEY.decode(), extra: str = "") -> str:
        """`fall` so high that no health check takes a peer down: a probe slow on a loaded machine would have a
        node stand in for its peer, an origin fetch that no change of membership made (a refused connection
        still takes it down at once)."""
        members = "".join(
            f'[[cluster.nodes]]\nid = "node{j}"\naddress = "127.0.0.1:{self.nodes[j].port}"\n'
            f'admin = "127.0.0.1:{self.nodes[j].admin}"\nweight = {w}\n'
            for j, w in ring.items()
        )
        return (
            f'[server]\nlisten = ["127.0.0.1:{node.port}"]\nworkers = 1\n'
            f'[admin]\nlisten = "127.0.0.1:{node.admin}"\n'
            f'[[admin.tokens]]\nname = "ops"\ntoken = "{OPERATOR}"\nrole = "operator"\n'
            f'{extra}[cache]\ndir = "{self.tmp / f"c{node.i}"}"\ndisk = "64MiB"\nmemory = "16MiB"\n'
            f'[cluster]\nself = "{node.id}"\nkey = "{key}"\ninterval = 1.0\ntimeout = 1.0\nfall = 1000\nrise = 2\n'
            f'{members}[[sites]]\nname = "videos"\nhosts = ["video.test"]\norigins = ["{self.origin.url}"]\n'
        )

    def path(self, node: Node) -> Path:
        return self.tmp / f"{node.id}.toml"

    async def start(
        self, stack: contextlib.AsyncExitStack, node: Node, ring: dict[int, float], extra: str = ""
    ) -> None:
        self.path(node).write_text(self.config(node, ring, extra=extra))
        node.ring = ring
        draining: list[asyncio.Future[None]] = []
        stack.push_async_callback(lambda: asyncio.wait_for(asyncio.gather(*draining), 30))  # once it has exited
        served = edge_process("serve", "--config", str(self.path(node)), ready=READY)
        node.proc = await stack.enter_async_context(served)
        draining.append(asyncio.ensure_future(node.drain()))
        self.serving.append(node)

    async def reload(self, node: Node, ring: dict[int, float], text: str | None = None) -> bytes:
        """SIGHUP with the file for `ring` (or `text`): the log line that says it was applied or refused."""
        self.path(node).write_text(text if text is not None else self.config(node, ring))
        done, refused = node.count(RELOADED), node.count(REFUSED)
        assert node.proc is not None
        node.proc.send_signal(signal.SIGHUP)
        async with node.changed:
            await asyncio.wait_for(
                node.changed.wait_for(lambda: node.count(RELOADED) > done or node.count(REFUSED) > refused), 30
            )
        last = next(line for line in reversed(node.lines) if RELOADED in line or REFUSED in line)
        if RELOADED in last:
            node.ring = ring
        return last

    async def get(self, s: aiohttp.ClientSession, node: Node, path: str) -> tuple[int, bytes, str]:
        async with s.get(f"http://127.0.0.1:{node.port}{path}", headers={"Host": "video.test"}) as r:
            return r.status, await r.read(), r.headers.get("Cache-Status", "")

    async def viewer(self, n: int, stop: asyncio.Event) -> None:
        """One viewer's requests for the warm set, to every node DNS lists in turn, until `stop`."""
        async with aiohttp.ClientSession() as s:
            turn = n
            while not stop.is_set():
                turn += 1
                node, path = self.serving[turn % len(self.serving)], WARM[(turn * 7 + n) % len(WARM)]
                try:
                    status, data, cache = await self.get(s, node, path)
                except aiohttp.ClientError as exc:
                    self.failures.append(f"{node.id} {path}: {exc!r}")
                    continue
                self.answers += 1
                if (status, data) != (200, body(path)):
                    self.failures.append(f"{node.id} {path}: {status} {cache} {data[:80]!r}")

    async def purge_reaches_every_node(self, s: aiohttp.ClientSession, step: str) -> None:
        """For each node that serves: an object it owns in its own ring, stored there, changed at the origin and
        purged at the next node; every node that serves answers the new bytes at once."""
        for n, holder in enumerate(self.serving):
            at = self.serving[(n + 1) % len(self.serving)]
            path = owned(holder, f"/p/{step}/{holder.id}/")
            self.origin.put(path, OLD, etag='"old"')
            assert (await self.get(s, holder, path))[:2] == (200, OLD), (step, holder.id, path)
            self.origin.put(path, NEW, etag='"new"')
            answer = await purge(s, at, path)
            assert answer["failed"] == [], (step, at.id, answer)
            for node in self.serving:
                status, data, cache = await self.get(s, node, path)
                said = (step, "purged at", at.id, "held by", holder.id, "asked", node.id, cache)
                assert (status, data == NEW) == (200, True), said


def ring_of(nodes: dict[int, float]) -> Ring:
    return Ring.of(Member(f"node{j}", "-", w) for j, w in nodes.items())


def owner(ring: dict[int, float], path: str) -> str:
    found = ring_of(ring).owner(make_key("videos", "video.test", path, ("*",)).primary)
    assert found is not None
    return found.id


def owned(node: Node, prefix: str) -> str:
    """A path under `prefix` that `node` owns in the ring it runs with."""
    return next(p for p in (f"{prefix}{n}" for n in range(200)) if owner(node.ring, p) == node.id)


async def purge(s: aiohttp.ClientSession, node: Node, path: str) -> dict[str, object]:
    auth = {"Authorization": f"Bearer {OPERATOR}"}
    url = f"http://127.0.0.1:{node.admin}/purge"
    async with s.post(url, data=json.dumps({"url": f"http://video.test{path}"}), headers=auth) as r:
        assert r.status == 200, await r.text()
        return await r.json()  # type: ignore[no-any-return]


def fetches(origin: Origin, path: str) -> int:
    """Requests for `path` that took its bytes from the origin (not revalidations)."""
    return sum(1 for s in origin.seen if s.path == path and "If-None-Match" not in s.headers)


async def test_nodes_added_reweighted_and_retired_by_reload_while_serving(origin: Origin, tmp_path: Path) -> None:
    for p in WARM:
        origin.put(p, body(p))
    c = Cluster(origin, tmp_path)
    n0, n1, n2, n3 = c.nodes
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        s = await stack.enter_async_context(aiohttp.ClientSession())
        # node3's cache dir holds a copy from before: it served /old alone, and stopped
        stale = owned(Node(3, ring=FOUR), "/old/")
        origin.put(stale, OLD, etag='"old"')
        async with contextlib.AsyncExitStack() as alone:
            await c.start(alone, n3, {3: 1.0})
            assert (await c.get(s, n3, stale))[:2] == (200, OLD)
        c.serving.clear()
        for node in (n0, n1, n2):
            await c.start(stack, node, THREE)
        origin.put(stale, NEW, etag='"new"')
        assert (await purge(s, n0, stale))["failed"] == []  # made before node3 joins
        viewers = [asyncio.ensure_future(c.viewer(n, stop)) for n in range(4)]
        stack.push_async_callback(lambda: asyncio.gather(*viewers))
        stack.callback(stop.set)
        await c.purge_reaches_every_node(s, "three")

        await c.start(stack, n3, FOUR)  # added: it has every member, its peers do not know it yet
        assert (await c.get(s, n3, stale))[:2] == (200, NEW)
        await c.purge_reaches_every_node(s, "added")
        for node in (n0, n1, n2):
            assert RELOADED in await c.reload(node, FOUR)
            await c.purge_reaches_every_node(s, f"add-{node.id}")
        for node in (n3, n0, n1, n2):
            assert RELOADED in await c.reload(node, WEIGHED)
            await c.purge_reaches_every_node(s, f"weigh-{node.id}")
        good = c.config(n0, WEIGHED)
        for bad, problem in BAD_CLUSTERS:  # refused, naming file, key and problem; node0 goes on as it was
            said = await c.reload(n0, RETIRED, good.replace(*bad))
            assert f"{REFUSED.decode()}{c.path(n0)}: {problem}".encode() in said, said
            assert await members(s, n0) == ["node0", "node1", "node2", "node3"]
        await c.purge_reaches_every_node(s, "refused")
        for node in (n0, n1, n3, n2):  # node2 is given the file too, and refuses it: it is not in it
            said = await c.reload(node, RETIRED)
            assert (REFUSED in said) == (node is n2), said
            await c.purge_reaches_every_node(s, f"retire-{node.id}")
        assert b"cluster.self: 'node2' is not one of the nodes" in said

        stop.set()
        await asyncio.gather(*viewers)
        assert c.failures == []
        assert c.answers > 100
        for p in WARM:  # at most once per owner it had: a new owner may ask its previous owner first
            had = {owner(r, p) for r in (THREE, FOUR, WEIGHED, RETIRED)}
            assert 1 <= fetches(origin, p) <= len(had), (p, fetches(origin, p), had)

        c.serving.remove(n2)  # DNS no longer names it; it stops, and no peer still checks it
        assert n2.proc is not None
        n2.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(n2.proc.wait(), 30) == 0
        for node in (n0, n1, n3):
            for p in WARM:
                assert (await c.get(s, node, p))[:2] == (200, body(p))
        for node in (n0, n1, n3):  # none forwarded to it (it would be down) nor checks it (no longer in its ring)
            assert node.count(b"peer node2 is down") == 0, node.id
            assert await members(s, node) == ["node0", "node1", "node3"]


async def members(s: aiohttp.ClientSession, node: Node) -> list[str]:
    """The members `node` has, as its admin API's /ring gives them."""
    auth = {"Authorization": f"Bearer {OPERATOR}"}
    url = f"http://127.0.0.1:{node.admin}/ring?url=http://video.test/"
    async with s.get(url, headers=auth) as r:
        assert r.status == 200
        return sorted(o["id"] for o in (await r.json())["owners"])


async def test_a_member_added_by_reload_is_used_once_its_checks_say_it_is_up(origin: Origin, tmp_path: Path) -> None:
    """node2 is added to node0's file before it answers: its ports take connections and say nothing (a machine
    still booting, a process not yet serving). node0 uses it only once its health checks say it is up; before,
    a new member counted as up from the reload on, and a request for an object it owned waited for it and got 504."""
    c = Cluster(origin, tmp_path)
    n0, n1, n2 = c.nodes[:3]
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                pass
        writer.close()

    quiet = [await asyncio.start_server(silent, "127.0.0.1", port) for port in (n2.port, n2.admin)]
    extra = "[origin]\nread_timeout = 3.0\n"  # a forward to it is answered 504 after this
    async with contextlib.AsyncExitStack() as stack:
        s = await stack.enter_async_context(aiohttp.ClientSession())
        for node in (n0, n1):
            await c.start(stack, node, {0: 1.0, 1: 1.0}, extra)
        n2.ring = {0: 1.0, 1: 1.0, 2: 1.0}
        before, after = owned(n2, "/before-up/"), owned(n2, "/after-up/")
        for p in (before, after):
            origin.put(p, body(p))
        said = await c.reload(n0, n2.ring, c.config(n0, n2.ring, extra=extra))
        assert RELOADED in said
        assert (await c.get(s, n0, before))[:2] == (200, body(before))
        assert origin.hits[before] == 1
        for server in quiet:
            server.close()
        for w in held:
            w.close()
        await asyncio.gather(*(server.wait_closed() for server in quiet))
        up = n0.count(b"peer node2 is up")
        await c.start(stack, n2, n2.ring, extra)
        await n0.until(b"peer node2 is up", up + 1)
        status, data, _ = await c.get(s, n0, after)  # forwarded to node2, which stores it
        assert (status, data) == (200, body(after))
        assert (await c.get(s, n2, after))[2] == "edgecache; hit"
        assert origin.hits[after] == 1


async def test_a_reload_that_drops_the_cluster_section_keeps_the_cluster_until_a_restart(
    origin: Origin, tmp_path: Path
) -> None:
    """A node's file loses its [cluster] section (the node retired as a standalone one, or an edit gone wrong). Its
    worker keeps its cluster view, forwarding to its peers, which only a restart stops; the reload took the rest
    of the cluster away: its purges were applied on it alone, and its viewers were relayed the peer's purged copy."""
    c = Cluster(origin, tmp_path)
    n0, n1 = c.nodes[:2]
    both = {0: 1.0, 1: 1.0}
    async with contextlib.AsyncExitStack() as stack:
        s = await stack.enter_async_context(aiohttp.ClientSession())
        for node in (n0, n1):
            await c.start(stack, node, both)
        path = owned(n1, "/alone/")
        origin.put(path, OLD, etag='"old"')
        assert (await c.get(s, n0, path))[:2] == (200, OLD)  # stored on node1, its owner
        text = c.config(n0, both)
        alone = text[: text.index("[cluster]")] + text[text.index("[[sites]]") :]
        said = await c.reload(n0, both, alone)
        assert RELOADED in said
        assert n0.count(b"reload: cluster (from a cluster to none) changed in") == 1
        origin.put(path, NEW, etag='"new"')
        answer = await purge(s, n0, path)
        assert (answer["confirmed"], answer["failed"]) == (2, [])
        assert (await c.get(s, n0, path))[:2] == (200, NEW)
        assert (await c.get(s, n1, path))[:2] == (200, NEW)
