"""The load gauges on /metrics (edgecache_client_connections, edgecache_requests_in_flight and their limits): after a
sample they are exactly the counts the limits judge, N idle connections and M requests held at the origin, and
0/0 once the requests are answered and the connections closed; with two workers, summed over both."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from edgecache.config import Listen
from edgecache.metrics import exposition
from tests.conftest import Edge, make_config, start_edge
from tests.e2e.procs import edge_process, free_port
from tests.e2e.test_operations import metric
from tests.e2e.test_tls import issue, trusting
from tests.e2e.test_watchdog import metrics_until
from tests.origin import Origin
from tests.wire import read_answer

IDLE, HELD = 5, 3
GAUGES = (
    "edgecache_client_connections",
    "edgecache_requests_in_flight",
    "edgecache_client_connections_limit",
    "edgecache_requests_in_flight_limit",
)

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: video.test\r\n\r\n".encode()


def gauges(text: str) -> list[float]:
    assert all(f"\n{name} " in text for name in GAUGES), text  # each one exported, not a sum of none
    return [metric(text, name) for name in GAUGES]


@contextlib.asynccontextmanager
async def held_load(port: int, origin: Origin) -> AsyncIterator[list[Conn]]:
    """IDLE keep-alive connections, each with one request answered, and HELD more whose requests (each for an
    object of its own) the origin holds: those yielded once the origin has every one; the connections closed after."""
    origin.put("/idle", b"i" * 100)
    for k in range(HELD):
        origin.put(f"/held-{k}", bytes([k]) * 1000)
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(IDLE)]
    held: list[Conn] = []
    try:
        for reader, writer in idle:
            writer.write(request("/idle"))
            status, _, body = await read_answer(reader)
            assert (status, body) == (200, b"i" * 100)
        seen = len(origin.seen)
        origin.gate = asyncio.Event()
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(HELD)]
        for k, (_, writer) in enumerate(held):
            writer.write(request(f"/held-{k}"))
        async with asyncio.timeout(20):
            await origin.wait_for_requests(seen + HELD)
        yield held
    finally:
        if origin.gate is not None:
            origin.gate.set()
        for _, writer in idle + held:
            writer.close()


async def answered(held: list[Conn]) -> None:
    """The held requests' answers, each its object's exact bytes."""
    for k, (reader, _) in enumerate(held):
        status, _, body = await read_answer(reader)
        assert (status, body) == (200, bytes([k]) * 1000)


async def test_the_gauges_are_the_counts_the_limits_judge_then_zero(edge: Edge, origin: Origin) -> None:
    """Through the fast path and with it off (every connection handed to the full handler): the same counts."""
    assert edge.fast is not None
    limits = [float(edge.fast.settings.max_connections), float(edge.node.config.max_requests)]
    async with held_load(edge.port, origin) as held:
        edge.fast.sample()
        assert gauges(exposition()[0].decode()) == [IDLE + HELD, HELD, *limits]
        assert origin.gate is not None
        origin.gate.set()
        await answered(held)
        edge.fast.empty.clear()
    async with asyncio.timeout(10):
        await edge.fast.empty.wait()  # the node saw every connection close
    edge.fast.sample()
    assert gauges(exposition()[0].decode()) == [0, 0, *limits]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_tls_connections_count_from_the_accept_as_the_door_counts_them(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """One HTTPS connection that has not sent its ClientHello (its handshake pending) and two answered over TLS:
    3, as max_connections sees them; 0 once they closed."""
    origin.put("/idle", b"i" * 100)
    ca = trustme.CA()
    config = make_config(tmp_path / "c", [origin.url])
    site = replace(config.sites[0], tls=issue(ca, tmp_path, "videos", "video.test"))
    config = replace(config, sites=(site,), tls_listen=(Listen("127.0.0.1", 0),), fast_path=fast)
    async with start_edge(config) as edge:
        assert edge.fast is not None
        limits = [float(edge.fast.settings.max_connections), float(config.max_requests)]
        # Accepted in order from one listener: once the later ones are answered, the first is seated.
        pending = await asyncio.open_connection("127.0.0.1", edge.ports[1])
        tls = [
            await asyncio.open_connection("127.0.0.1", edge.ports[1], ssl=trusting(ca), server_hostname="video.test")
            for _ in range(2)
        ]
        try:
            for reader, writer in tls:
                writer.write(request("/idle"))
                status, _, body = await read_answer(reader)
                assert (status, body) == (200, b"i" * 100)
            edge.fast.sample()
            assert gauges(exposition()[0].decode()) == [3, 0, *limits]
            doors = [door.done for door in edge.fast.handshaking if door.done is not None]
            assert len(doors) == 1
            edge.fast.empty.clear()
        finally:
            for _, writer in [pending, *tls]:
                writer.close()
        async with asyncio.timeout(10):
            await asyncio.wait(doors)  # the pending handshake's seat given back
            await edge.fast.empty.wait()
        edge.fast.sample()
        assert gauges(exposition()[0].decode()) == [0, 0, *limits]


def two_workers(tmp_path: Path, origin: Origin, port: int, admin: int) -> Path:
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 2\nmax_connections = 100\nmax_requests = 40\n'
        f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[cache]\ndir = "{tmp_path / "c"}"\ndisk = "64MiB"\nmemory = "16MiB"\nstats_interval = 0.5\n'
        f'[[sites]]\nname = "videos"\nhosts = ["video.test"]\norigins = ["{origin.url}"]\n'
    )
    return cfg


async def test_two_workers_sum_their_counts_and_limits_on_metrics(origin: Origin, tmp_path: Path) -> None:
    """/metrics sums each worker's sample (livesum): both workers' limits (2 x 100 connections, 2 x 40 requests),
    and the connections and requests wherever SO_REUSEPORT put them. max_connections is one no descriptor limit
    a test machine has lowers (server.connection_cap)."""
    port, admin = free_port(), free_port()
    ready = {b"admin listening on": 1, b"edgecache listening on": 2}
    cfg = two_workers(tmp_path, origin, port, admin)
    async with edge_process("serve", "--config", str(cfg), ready=ready):
        async with held_load(port, origin) as held:
            want = [IDLE + HELD, HELD, 200, 80]
            await metrics_until(admin, lambda text: _shows(text, want), f"{GAUGES} at {want}")
            assert origin.gate is not None
            origin.gate.set()
            await answered(held)
        await metrics_until(admin, lambda text: _shows(text, [0, 0, 200, 80]), f"{GAUGES} at 0, 0, 200, 80")


def _shows(text: str, want: list[int]) -> bool:
    return all(f"\n{name} " in text for name in GAUGES) and [metric(text, n) for n in GAUGES] == want
