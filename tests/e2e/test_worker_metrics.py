"""What /metrics shows of a node of several workers after one of them was replaced: the state its live workers
see, never the last value a dead worker wrote to the shared files."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.e2e.procs import free_port
from tests.e2e.test_operations import metric
from tests.e2e.test_purge_catchup import process_config
from tests.e2e.test_watchdog import metrics_until, node
from tests.origin import Origin


async def peer_up(admin: int, peer: str, want: float) -> None:
    """Until node `admin`'s /metrics shows `peer` with edgecache_peer_up == want."""

    def shows(seen: str) -> bool:
        return f'edgecache_peer_up{{peer="{peer}"}}' in seen and metric(seen, "edgecache_peer_up", peer=peer) == want

    await metrics_until(admin, shows, f"{peer} at {want}")


async def test_a_peer_every_live_worker_sees_down_is_down_after_a_worker_was_replaced(
    origin: Origin, tmp_path: Path
) -> None:
    """The gauge kept the highest value of every worker that ever ran: a worker killed while the peer was up left
    its 1 behind for good, so the peer-down alert never fired for that node again."""
    ports, admins = [free_port() for _ in range(2)], [free_port() for _ in range(2)]
    configs = [process_config(i, ports, admins, origin, tmp_path) for i in range(2)]
    async with node(configs[1]) as peer:
        await peer.expect("edgecache listening on", 2)
        async with node(configs[0]) as n:
            await n.expect("edgecache listening on", 2)
            await n.expect("admin listening on")
            await peer_up(admins[0], "node1", 1.0)
            victim = n.pid_of(1)
            os.kill(victim, signal.SIGKILL)
            await n.expect(f"worker 1 (pid {victim}) died: killed by SIGKILL")
            await n.expect("edgecache listening on", 3)
            assert await peer.stop() == 0
            await n.expect("peer node1 is down", 2)  # worker 0 and worker 1's successor
            await peer_up(admins[0], "node1", 0.0)
            assert await n.stop() == 0
