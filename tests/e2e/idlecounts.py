"""What a node counts of the work it has in hand, read from its parts: every count that bounds work (requests in
flight against max_requests, client connections against max_connections, fill memory, each site's share of each
origin and peer pool) and every gauge of things held. Once the node is idle, each must be back at its idle value,
whatever faults the work before met: a count left over makes the node look busy, or refuse work it could do.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Collection
from pathlib import Path

import aiohttp

from edgecache.core.memo import Pool as MemoPool
from edgecache.proxy.origin import _Pool
from edgecache.proxy.shares import Shares
from edgecache.storage.memory import MemoryTier
from tests.conftest import Edge
from tests.samples import sample_value

Counts = dict[str, int]
GHOST = 2  # storage.policy's ghost queue: keys alone, no value


def _shares_held(shares: Shares) -> int:
    return sum(t.held + t.waiting for t in shares._of.values())


def _pools(edge: Edge) -> list[_Pool]:
    origin = edge.node.origin
    sessions: list[aiohttp.ClientSession | None] = [origin._session, origin._bodies, origin._passes]
    return [s.connector for s in sessions if s is not None and isinstance(s.connector, _Pool)]


def memory_drift(tier: MemoryTier) -> int:
    """How far the tier's count of its bytes is from the bytes of what it holds (0: exact)."""
    held = sum(len(v) + tier._overhead for v in tier._values.values())
    return tier.stats().used_bytes - held


def pooled(edges: list[Edge]) -> set[tuple[str, int]]:
    """The local addresses of the idle connections the nodes keep to each other (a peer's keep-alive connections
    are its client connections, at idle too)."""
    transports = []
    for e in edges:
        transports += [proto.transport for p in _pools(e) for conns in p._conns.values() for proto, _ in conns]
        peers = e.fast._peers if e.fast is not None else None
        if peers is not None:
            transports += [c.transport for q in peers.idle.values() for c in q]
    return {t.get_extra_info("sockname")[:2] for t in transports if t is not None and not t.is_closing()}


def memo_drift(pool: MemoPool) -> int:
    """How far the fast path's memos' counts of their bytes are from the cost of what they hold (0: exact)."""
    drift = 0
    for memo in pool.memos:
        cost = memo.cost or (lambda _key: 0)
        drift += abs(memo.new_bytes - sum(cost(k) for k in memo.new))
        drift += abs(memo.old_bytes - sum(cost(k) for k in memo.old))
    drift += abs(pool.new_bytes - sum(m.new_bytes for m in pool.memos))
    return drift + abs(pool.old_bytes - sum(m.old_bytes for m in pool.memos))


def counts(edge: Edge, peers: Collection[tuple[str, int]] = ()) -> Counts:
    """Each count of work in hand of `edge`'s worker, by name; idle() gives the value each has with nothing to do.
    `peers`: the addresses of the other nodes' idle connections to it (pooled())."""
    node, fast = edge.node, edge.fast
    engine, shared = node.engine, node.shared
    out: Counts = {
        "requests in flight": shared.in_flight,
        "fills": len(engine.fills),
        "fill tasks": len(engine._tasks),
        "disk writes": len(engine._writes),
        "answers reading entries": sum(engine._reading.values()),
        "entries being deleted": sum(node.store._deleting.values()),
        "open slice files in use": sum(f.users for f in node.store._files.values()),
        "purges being applied": len(node.store.applying()),  # a peer is judged to lack them (cluster.behind)
        "fill memory shared": engine.budget.shared.held,
        "fill memory paced": engine.budget.paced.held,
        "fill memory waiting": engine.budget.shared.waiting + engine.budget.paced.waiting,
        "memory tier drift": memory_drift(node.store.memory),
        "tier spilling bytes": node.store.spilling,
        "tier writes": len(node.store._writing),
        "tier tasks": len(node.store._tier_tasks),
        "declared clients": len(shared.declared),
        "adopted fills": len(shared.adopted),
        "admitted requests": len(shared.admitted),
    }
    pools = _pools(edge)
    out["origin connections in use"] = sum(len(p._acquired) + len(p._aside) for p in pools)
    out["origin connections by site"] = sum(len(p._site_of) for p in pools)
    out["origin shares held"] = sum(_shares_held(p.shares) for p in pools)
    if fast is not None:
        transports = [c.transport for c in fast.connections] + list(fast.handed)
        seated = sum(1 for door in fast.handshaking if door.seated)
        out["lingering connections"] = len(fast.lingering.lingering) + len(fast.full.lingering)
        out["memo bytes drift"] = memo_drift(fast.decider.pool)
        out["connections miscounted"] = fast.open - len(fast.connections) - len(fast.handed) - seated
        out["viewer connections"] = sum(
            1 for t in transports if t is None or t.get_extra_info("peername")[:2] not in peers
        )
        pool = fast._peers
        if pool is not None:
            idle = {a: sum(1 for c in q if c.transport is not None) for a, q in pool.idle.items()}
            out["peer connections in use"] = sum(n - idle.get(a, 0) for a, n in pool.open.items())
            out["peer connections stalled"] = sum(pool.stalled.values())
            out["peer forwards waiting"] = sum(pool.waiting.values()) + sum(len(w) for w in pool.waiters.values())
            out["peer shares held"] = sum(_shares_held(s) for s in pool._shares.values())
    return out


def disk_counts(directory: Path) -> Counts:
    """What the disk tier in `directory` counts against what it holds, read in a thread of the test's own (its
    database through a connection of its own): the eviction index and the values must be the same keys, diskcache's
    byte count its rows' sum, every value file a row's, and no lease held once idle."""
    con = sqlite3.connect(f"file:{directory / 'cache.db'}?mode=ro", uri=True, timeout=10)
    try:
        values = {k for (k,) in con.execute("SELECT key FROM Cache WHERE expire_time IS NULL")}
        indexed = {k for (k,) in con.execute("SELECT key FROM edge_index WHERE queue != ?", (GHOST,))}
        (size,) = con.execute("SELECT value FROM Settings WHERE key = 'size'").fetchone()
        (rows,) = con.execute("SELECT COALESCE(SUM(size), 0) FROM Cache").fetchone()
        files = {f for (f,) in con.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL")}
        leases = con.execute(
            "SELECT COUNT(*) FROM Cache WHERE key LIKE 'l:%' AND expire_time > ?", (time.time(),)
        ).fetchone()[0]
    finally:
        con.close()
    on_disk = {str(f.relative_to(directory)) for f in directory.glob("*/*.val")}
    return {
        "disk values unindexed": len(values - indexed),
        "disk index without value": len(indexed - values),
        "disk size drift": int(size) - int(rows),
        "disk files without row": len(on_disk - files),
        "disk rows without file": len(files - on_disk),
        "disk leases held": leases,
    }


def _disk_left(directory: Path) -> Counts:
    return {k: v for k, v in disk_counts(directory).items() if v}


async def disk_settled(directory: Path, seconds: float = 10) -> None:
    """Until disk_counts of the disk in `directory` are all 0 (a value's row is admitted before its file is written,
    and leases are let go of after the writes: polled); then asserted, naming what is left."""
    loop = asyncio.get_running_loop()
    left: Counts = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while left := await loop.run_in_executor(None, _disk_left, directory):  # noqa: ASYNC110 (another thread's)
                await asyncio.sleep(0.05)
    assert left == {}, (directory, left)


async def disks_settled(edge: Edge) -> None:
    """disk_settled for each disk of the node in service."""
    for slot in edge.node.store.disk._slots:
        if slot.tier is not None:
            await disk_settled(slot.tier.directory)


def idle(edge: Edge) -> Counts:
    """Every count of counts() at its idle value: 0, nothing in hand, no drift."""
    return dict.fromkeys(counts(edge), 0)


GAUGES = (
    ("edgecache_fill_memory_bytes", {"pool": "shared"}),
    ("edgecache_fill_memory_bytes", {"pool": "paced"}),
    ("edgecache_fill_memory_waiting", {"pool": "shared"}),
    ("edgecache_fill_memory_waiting", {"pool": "paced"}),
)


def gauges() -> dict[str, float]:
    """The gauges of things held that every worker of the test process adds to (metrics are process-wide)."""
    return {f"{name}{labels}": sample_value(name, labels) or 0.0 for name, labels in GAUGES}


async def settled(edges: list[Edge], before: dict[str, float], step: str = "", seconds: float = 30) -> None:
    """Until every count of every node is at its idle value and the gauges are back where they were (`before`),
    polled (the node lets go of what it held in its own time: a task's finally, a connection's close); on time out,
    the assertion names every count that is not. A peer's connect probe (every 0.1 s in the cluster tests) is a
    viewer connection while it lasts: one that outlived a loop turn made a cluster look busy."""

    def holds() -> bool:
        peers = pooled(edges)
        return all(counts(e, peers) == idle(e) for e in edges) and gauges() == before

    with contextlib.suppress(TimeoutError):  # then the assertions below say what is left
        await until(holds, seconds)
    peers = pooled(edges)
    for e in edges:
        left = {k: v for k, v in counts(e, peers).items() if v}
        assert left == {}, (step, e.port, left)
    assert gauges() == before, step


async def until(holds: Callable[[], bool], seconds: float = 10) -> None:
    async with asyncio.timeout(seconds):
        while not holds():  # noqa: ASYNC110 (the node's own state: no event to wait on)
            await asyncio.sleep(0.01)
