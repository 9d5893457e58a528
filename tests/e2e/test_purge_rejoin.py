"""A node that comes back is told of the purges made once it answers, though its peers still see it down.

A node that starts catches up with the purges it missed before it listens (cluster.purgesync), then serves its
cache. Its peers see it up only after `rise` good health checks in a row; a purge made meanwhile at a peer was
listed as failed for it without its being asked, and it served the bytes that purge removed until its own next
purge-log round: the cluster mode of loadtest/fuzz_e2e.py found 10 such answers in 150 s (seed 2), each from a node
stopped and started again a moment before. Two real node processes on loopback: node0's `rise` keeps it seeing
node1 down for the whole test, and node1's `interval` puts its next round after the test, so only the purge's
pass-on can tell it. node0 reaches node1's admin listener through a relay that counts its health checks, so the
test knows when one has answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aiohttp

from edgecache.core.keys import make_key
from edgecache.core.ring import Member, Ring
from tests.conftest import CLUSTER_KEY
from tests.e2e.procs import edge_process, free_port
from tests.origin import Origin

OPERATOR = "operator-secret-0123456789"
OLD, NEW = b"before the purge " * 1000, b"after the purge! " * 1000


class CheckRelay:
    """127.0.0.1:port -> 127.0.0.1:target, counting the health checks (GET /healthz) that come through."""

    def __init__(self, target: int) -> None:
        self.port, self.target = free_port(), target
        self.checks = 0
        self.changed = asyncio.Condition()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                    if count and data.count(b"GET /healthz "):  # the health checks share a kept-alive connection
                        async with self.changed:
                            self.checks += data.count(b"GET /healthz ")
                            self.changed.notify_all()
            dst.close()

        await asyncio.gather(copy(reader, up_writer, True), copy(up_reader, writer, False))


def config(tmp: Path, me: int, ports: list[int], admins: list[int], origin: str, interval: float, rise: int) -> Path:
    """Node `me`'s config; `admins`: where it reaches each node's admin listener (its own is where it listens)."""
    nodes = "".join(
        f'[[cluster.nodes]]\nid = "node{j}"\naddress = "127.0.0.1:{p}"\nadmin = "127.0.0.1:{a}"\n'
        for j, (p, a) in enumerate(zip(ports, admins, strict=True))
    )
    path = tmp / f"node{me}.toml"
    path.write_text(
        f'[server]\nlisten = ["127.0.0.1:{ports[me]}"]\n[admin]\nlisten = "127.0.0.1:{admins[me]}"\n'
        f'[[admin.tokens]]\nname = "ops"\ntoken = "{OPERATOR}"\nrole = "operator"\n'
        f'[cache]\ndir = "{tmp / f"cache{me}"}"\ndisk = "64MiB"\n'
        f'[cluster]\nself = "node{me}"\nkey = "{CLUSTER_KEY.decode()}"\ninterval = {interval}\ntimeout = 1.0\n'
        f"fall = 1\nrise = {rise}\n{nodes}"
        f'[[sites]]\nname = "videos"\nhosts = ["video.test"]\norigins = ["{origin}"]\n'
    )
    return path


async def test_a_purge_made_while_its_peer_still_sees_a_node_down_reaches_it_once_it_answers(
    origin: Origin, tmp_path: Path
) -> None:
    ports, admins = [free_port() for _ in range(2)], [free_port() for _ in range(2)]
    ring = Ring.of(Member(f"node{i}", f"127.0.0.1:{p}") for i, p in enumerate(ports))
    path = next(
        p
        for p in (f"/rejoin/{n}" for n in range(100))
        if ring.owner(make_key("videos", "video.test", p, ("*",)).primary).id == "node1"  # type: ignore[union-attr]
    )
    origin.put(path, OLD)
    relay = CheckRelay(admins[1])
    server = await asyncio.start_server(relay._pipe, "127.0.0.1", relay.port)
    # node0 checks node1 every 0.1 s, through the relay, and would see it up only after 100,000 good checks
    peer = config(tmp_path, 0, ports, [admins[0], relay.port], origin.url, interval=0.1, rise=100_000)
    node = config(tmp_path, 1, ports, admins, origin.url, interval=3600.0, rise=2)  # no purge-log round of its own
    ready = {b"edgecache listening on": 1, b"admin listening on": 1}
    url = f"http://127.0.0.1:{ports[1]}{path}"
    down = {**ready, b"peer node1 is down": 1}  # its first check, before node1 runs
    try:
        async with (
            edge_process("serve", "--config", str(peer), ready=down),
            aiohttp.ClientSession() as s,
            edge_process("serve", "--config", str(node), ready=ready),
        ):
            # node1 caught up (nothing to take) and listens; it stores the object it owns
            async with s.get(url, headers={"Host": "video.test"}) as r:
                assert (r.status, await r.read()) == (200, OLD)
            async with relay.changed:  # the first check sent once node1 listens has been answered and recorded
                since = relay.checks
                await asyncio.wait_for(relay.changed.wait_for(lambda: relay.checks >= since + 2), 30)
            origin.put(path, NEW, etag='"v2"')
            body = json.dumps({"url": f"http://video.test{path}"})
            auth = {"Authorization": f"Bearer {OPERATOR}"}
            async with s.post(f"http://127.0.0.1:{admins[0]}/purge", data=body, headers=auth) as r:
                assert r.status == 200
                answer = await r.json()
            async with s.get(url, headers={"Host": "video.test"}) as r:
                assert (r.status, await r.read() == NEW) == (200, True), r.headers.get("Cache-Status")
            assert (answer["confirmed"], answer["failed"]) == (2, [])
    finally:
        server.close()
        await server.wait_closed()
    assert origin.hits[path] == 2
