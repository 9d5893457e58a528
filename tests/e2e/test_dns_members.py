"""DNS membership on real edges over loopback sockets, with a DNS of the test's own (cluster.view.Resolver).

Like a Kubernetes StatefulSet behind a headless service: each pod has an address of its own (127.0.0.11, ...,
all on one port) and a PTR name `edgecache-N.edgecache-peers.default.svc.cluster.local`, and each node's id is
its pod name. A pod that comes back at another address keeps its id, its keys and its volume's cache.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from edgecache.cluster import view as view_module
from edgecache.cluster.view import ClusterView, dns_members
from edgecache.config import ClusterSettings, Config, Listen, build
from edgecache.core.ring import Member, Ring
from tests.conftest import CLUSTER_KEY, Edge, all_up, make_config, start_edge
from tests.e2e.procs import free_port
from tests.origin import Origin

SERVICE = "edgecache-peers.default.svc.cluster.local"
BODY = bytes(range(256)) * 300
FROM_THE_OWNERS_CACHE = 'edgecache; hit, edgecache; fwd=miss; detail="peer"'
SITE = {"name": "videos", "hosts": ["video.test"], "origins": ["http://127.0.0.1:1"]}


class FakeDNS:
    """The headless service's A/AAAA answers (pods' addresses) and the PTR name of each address."""

    def __init__(self) -> None:
        self.pods: dict[str, tuple[str, int]] = {}  # pod name -> (IP as DNS spells it, port)
        self.ptr: dict[str, str] = {}  # IP -> PTR name

    def place(self, pod: str, ip: str, port: int) -> None:
        self.pods[pod] = (ip, port)
        self.ptr = {a: f"{name}.{SERVICE}." for name, (a, _) in self.pods.items()}

    async def addresses(self, host: str, port: int) -> list[tuple[str, int]]:
        assert host == SERVICE
        return list(self.pods.values())

    async def name(self, ip: str) -> str | None:
        return self.ptr.get(ip)


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS()
    monkeypatch.setattr(view_module, "SystemResolver", lambda: fake)  # what open_node's follow_dns asks
    return fake


def views(edges: list[Edge]) -> list[ClusterView]:
    found = [e.node.cluster for e in edges]
    assert all(v is not None for v in found)
    return found  # type: ignore[return-value]


async def follow(edges: list[Edge], dns: FakeDNS) -> None:
    """One DNS round on every node (what follow_dns does each dns_interval), then until settled."""
    for v in views(edges):
        v.set_members(await dns_members(v, dns))
    await settled(edges)


async def settled(edges: list[Edge]) -> None:
    """Until every node sees every member up and no longer doubts its cache (a node that starts, or sees a peer
    join, revalidates what it stored until it has every purge its peers have: cluster.purgesync)."""
    async with asyncio.timeout(10):
        await all_up(edges)
        for e in edges:
            sync = e.node.purge_sync
            if sync is not None:
                async with sync.rounds:
                    await sync.rounds.wait_for(lambda s=sync: s.caught_up() and not s.doubting)  # type: ignore[misc]


def pod_config(tmp_path: Path, origin: Origin, settings: ClusterSettings, ip: str, port: int, pod: str) -> Config:
    cfg = make_config(tmp_path / pod, [origin.url])  # the pod's volume: the same directory wherever it runs
    cluster = replace(settings, interval=0.1, timeout=1.0, rise=1, fall=3, dns_interval=3600.0)
    return replace(cfg, listen=(Listen(ip, port),), cluster=cluster)


def stateful(pod: str) -> ClusterSettings:
    return ClusterSettings(self_id=pod, key=CLUSTER_KEY, dns=f"{SERVICE}:8080")


async def get(ip: str, port: int, path: str) -> tuple[int, str, bytes]:
    host = f"[{ip}]" if ":" in ip else ip
    async with aiohttp.ClientSession() as s, s.get(f"http://{host}:{port}{path}", headers={"Host": "video.test"}) as r:
        return r.status, r.headers.get("Cache-Status", ""), await r.read()


def owner(ids: list[str], path: str) -> str:
    best = Ring.of(Member(i, "-") for i in ids).owner(f"videos|video.test|{path}")
    assert best is not None
    return best.id


async def test_a_rescheduled_pod_keeps_its_id_and_its_cache(dns: FakeDNS, origin: Origin, tmp_path: Path) -> None:
    port = free_port()
    pods = ["edgecache-0", "edgecache-1", "edgecache-2"]
    ips = {"edgecache-0": "127.0.0.11", "edgecache-1": "127.0.0.12", "edgecache-2": "127.0.0.13"}
    for pod in pods:
        dns.place(pod, ips[pod], port)
    path = next(p for p in (f"/v/{i}.bin" for i in range(100)) if owner(pods, p) == "edgecache-1")
    origin.put(path, BODY)

    def start(pod: str) -> contextlib.AbstractAsyncContextManager[Edge]:
        return start_edge(pod_config(tmp_path, origin, stateful(pod), ips[pod], port, pod))

    async with contextlib.AsyncExitStack() as stack:
        e0, e2 = (
            await stack.enter_async_context(start("edgecache-0")),
            await stack.enter_async_context(start("edgecache-2")),
        )
        async with start("edgecache-1") as e1:
            await follow([e0, e1, e2], dns)
            for v in views([e0, e1, e2]):
                assert [(m.id, m.address) for m in v.ring.members] == [(p, f"{ips[p]}:{port}") for p in pods]
            status, cache, body = await get(ips["edgecache-0"], port, path)
            assert (status, body) == (200, BODY)
            assert "peer" in cache  # forwarded to edgecache-1, which fetched it
            assert origin.hits[path] == 1
        # edgecache-1 is rescheduled: the same volume, another address.
        ips["edgecache-1"] = "127.0.0.14"
        dns.place("edgecache-1", ips["edgecache-1"], port)
        async with start("edgecache-1") as e1:
            await follow([e0, e1, e2], dns)
            for v in views([e0, e1, e2]):
                assert [(m.id, m.address) for m in v.ring.members] == [(p, f"{ips[p]}:{port}") for p in pods]
            status, cache, body = await get(ips["edgecache-2"], port, path)
            assert (status, body) == (200, BODY)
            assert cache == FROM_THE_OWNERS_CACHE  # edgecache-1's volume
        assert origin.hits[path] == 1


async def test_ipv6_self_ids_match_the_ids_dns_gives(dns: FakeDNS, origin: Origin, tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    # `self` as `${POD_IP}:8080` gives it, with POD_IP spelled out in full; DNS spells the same address otherwise.
    spelled = [f"0:0:0:0:0:0:0:1:{ports[0]}", f"[0::1]:{ports[1]}"]
    for i, (ip, port) in enumerate([("0:0::1", ports[0]), ("::0:1", ports[1])]):
        dns.pods[f"p{i}"] = (ip, port)
    ids = [f"[::1]:{p}" for p in ports]
    path = next(p for p in (f"/v6/{i}.bin" for i in range(100)) if owner(ids, p) == ids[1])
    origin.put(path, BODY)
    async with contextlib.AsyncExitStack() as stack:
        edges = []
        for i, port in enumerate(ports):
            doc = {
                "cluster": {"self": spelled[i], "dns": f"{SERVICE}:8080", "key": CLUSTER_KEY.decode()},
                "sites": [{"name": "videos", "hosts": ["video.test"], "origins": [origin.url]}],
            }
            settings = build(doc, "k.toml", tmp_path).cluster
            assert settings is not None
            assert settings.self_id == ids[i]
            edges.append(
                await stack.enter_async_context(
                    start_edge(pod_config(tmp_path, origin, settings, "::1", port, f"n{i}"))
                )
            )
        await follow(edges, dns)
        for v in views(edges):
            assert [m.id for m in v.ring.members] == sorted(ids)
            assert v.self_id in v.ring
        status, cache, body = await get("::1", ports[0], path)
        assert (status, body) == (200, BODY)
        assert "peer" in cache
        status, cache, body = await get("::1", ports[1], path)
        assert (status, cache, body) == (200, "edgecache; hit", BODY)
        assert origin.hits[path] == 1


async def test_configured_ipv6_members_are_reached_at_their_addresses(origin: Origin, tmp_path: Path) -> None:
    # Not DNS, but the same spelling: a configured member's address is put in the URL a forward goes to.
    ports = [free_port(), free_port()]
    nodes = [{"id": f"n{i}", "address": f"[::1]:{p}"} for i, p in enumerate(ports)]
    path = next(p for p in (f"/s6/{i}.bin" for i in range(100)) if owner(["n0", "n1"], p) == "n1")
    origin.put(path, BODY)
    async with contextlib.AsyncExitStack() as stack:
        edges = []
        for i, port in enumerate(ports):
            doc = {
                "cluster": {"self": f"n{i}", "nodes": nodes, "key": CLUSTER_KEY.decode()},
                "sites": [{"name": "videos", "hosts": ["video.test"], "origins": [origin.url]}],
            }
            settings = build(doc, "k.toml", tmp_path).cluster
            assert settings is not None
            assert [m.address for m in settings.nodes] == [f"[::1]:{p}" for p in ports]
            cfg = pod_config(tmp_path, origin, settings, "::1", port, f"n{i}")
            edges.append(await stack.enter_async_context(start_edge(cfg)))
        await settled(edges)
        status, cache, body = await get("::1", ports[0], path)
        assert (status, body) == (200, BODY)
        assert "peer" in cache
        assert origin.hits[path] == 1
        assert (await get("::1", ports[1], path))[:2] == (200, "edgecache; hit")


async def test_a_dns_server_that_does_not_answer_costs_one_lookup_per_member(monkeypatch: pytest.MonkeyPatch) -> None:
    # The system resolver's PTR lookups, with a DNS server that answers only when the test says.
    answer = asyncio.Event()
    asked: list[str] = []

    async def getnameinfo(sockaddr: tuple[str, int], flags: int) -> tuple[str, str]:
        asked.append(sockaddr[0])
        await answer.wait()
        return f"edgecache-{sockaddr[0].rpartition('.')[2]}.{SERVICE}.", "0"

    monkeypatch.setattr(asyncio.get_running_loop(), "getnameinfo", getnameinfo)
    monkeypatch.setattr(view_module, "DNS_NAME_TIMEOUT", 0.01)

    class Pods(view_module.SystemResolver):
        async def addresses(self, host: str, port: int) -> list[tuple[str, int]]:
            return [("10.0.0.0", 8080), ("10.0.0.1", 8080), ("10.0.0.2", 8080)]

    resolver = Pods()
    view = ClusterView(stateful("edgecache-0"))
    for _ in range(5):  # rounds that find no name: the lookups still running are waited for, not asked again
        view.set_members(await dns_members(view, resolver))
        assert view.ring.members == ()
    assert sorted(asked) == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    answer.set()
    view.set_members(await dns_members(view, resolver))
    assert [(m.id, m.address) for m in view.ring.members] == [(f"edgecache-{i}", f"10.0.0.{i}:8080") for i in range(3)]


async def test_a_dns_server_given_as_an_ipv6_literal_is_asked_without_brackets(tmp_path: Path) -> None:
    doc = {"cluster": {"self": "10.0.0.1:8080", "dns": "[fd00::53]:8080", "key": CLUSTER_KEY.decode()}, "sites": [SITE]}
    settings = build(doc, "k.toml", tmp_path).cluster
    assert settings is not None
    asked: list[tuple[str, int]] = []

    class Recorded(FakeDNS):
        async def addresses(self, host: str, port: int) -> list[tuple[str, int]]:
            asked.append((host, port))
            return [("10.0.0.1", 8080), ("::ffff:10.0.0.2", 8080)]

    view = ClusterView(settings)
    view.set_members(await dns_members(view, Recorded()))
    assert asked == [("fd00::53", 8080)]
    assert [m.id for m in view.ring.members] == ["10.0.0.1:8080", "10.0.0.2:8080"]
