"""The workers are forked from multiprocessing's fork server, but the node does not depend on it: killed, it costs
no worker and another takes its place; stopped, the next worker start does not wait on it for ever."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from loadtest.soak import worker_pids
from tests.e2e.procs import children, fork_servers, gone, running, workers_below
from tests.e2e.test_operations import metric
from tests.e2e.test_watchdog import DATA, Node, get, metrics_until, node, restarts, until, write_config
from tests.origin import Origin


def servers(n: Node) -> list[int]:
    """The node's fork servers: one, but between the end of one and the start of the next."""
    return fork_servers(n.proc.pid)


def found(n: Node) -> list[int]:
    """The workers as loadtest.soak finds them (to sample their RSS), and the test helper, which must agree."""
    pids = sorted(worker_pids(n.proc.pid))
    assert pids == sorted(workers_below(n.proc.pid))
    return pids


async def replaced(admin: int, ended: int, stalled: int) -> None:
    """Until the admin /metrics shows these counts of fork servers replaced (both series there)."""

    def shows(seen: str) -> bool:
        name = "edgecache_fork_server_restarts_total"
        counts = [metric(seen, name, reason=k) for k in ("ended", "stalled")]
        return counts == [ended, stalled] and all(f'{name}{{reason="{k}"}}' in seen for k in ("ended", "stalled"))

    await metrics_until(admin, shows, f"fork servers replaced: ended={ended} stalled={stalled}")


async def test_a_killed_fork_server_costs_no_worker(origin: Origin, tmp_path: Path) -> None:
    origin.put("/v.bin", DATA)
    cfg, port, admin = write_config(tmp_path, origin, workers=2)
    async with node(cfg) as n:
        await n.expect("edgecache listening on", 2)
        assert await get(port, "/v.bin") == (200, DATA)
        workers = [n.pid_of(0), n.pid_of(1)]
        [server] = servers(n)
        assert set(children(server)) == set(workers)
        assert found(n) == sorted(workers)
        await replaced(admin, ended=0, stalled=0)
        os.kill(server, signal.SIGKILL)
        # New connections, spread over both listeners, answered by the workers that were there before.
        for _ in range(8):
            assert await get(port, "/v.bin") == (200, DATA)
        assert [n.pid_of(0), n.pid_of(1)] == workers
        assert all(running(pid) for pid in workers)
        assert origin.hits["/v.bin"] == 1
        await n.expect(f"the fork server (pid {server}) ended: killed by SIGKILL")
        assert set(workers) <= set(children(n.proc.pid))  # orphans of the fork server, re-parented to the node's
        assert found(n) == sorted(workers)  # found though no fork server's children
        await restarts(admin, died=0, stuck=0)
        await replaced(admin, ended=1, stalled=0)  # shown by workers started before it: no worker start brings it
        # A worker that dies after that, no longer the fork server's child, is noticed, counted and replaced.
        await until(lambda: len(servers(n)) == 1)
        [successor] = servers(n)
        os.kill(workers[1], signal.SIGKILL)
        await n.expect(f"worker 1 (pid {workers[1]}) died: killed by SIGKILL; restarting in 0 s")
        assert gone(workers[1])  # reaped, not left a zombie
        await n.expect("edgecache listening on", 3)
        assert children(successor) == [n.pid_of(1)]
        assert found(n) == sorted([workers[0], n.pid_of(1)])  # one below the node, one below the fork server
        await restarts(admin, died=1, stuck=0)
        await replaced(admin, ended=1, stalled=0)
        for _ in range(8):
            assert await get(port, "/v.bin") == (200, DATA)
        # kill -9 of the node still ends every worker, the one the fork server left too.
        alive = {workers[0], n.pid_of(1), successor}
        n.proc.send_signal(signal.SIGKILL)
        assert await n.proc.wait() == -signal.SIGKILL
        await until(lambda: not any(running(pid) for pid in alive))
    assert "Traceback" not in n.text


async def test_a_stopped_fork_server_is_replaced_at_the_next_worker_start(origin: Origin, tmp_path: Path) -> None:
    """A worker dies while the fork server is stopped (SIGSTOP): its successor waited for the stopped fork server
    for ever, and the node's other signals and deaths with it."""
    origin.put("/v.bin", DATA)
    cfg, port, admin = write_config(tmp_path, origin, workers=2)
    async with node(cfg) as n:
        await n.expect("edgecache listening on", 2)
        assert await get(port, "/v.bin") == (200, DATA)
        first, victim = n.pid_of(0), n.pid_of(1)
        [server] = servers(n)
        os.kill(server, signal.SIGSTOP)
        os.kill(victim, signal.SIGKILL)
        # Bounded by node.expect's deadline: a hang fails here.
        await n.expect("worker 1 started: pid ", 2)
        await n.expect("edgecache listening on", 3)
        assert not running(server)
        [successor] = servers(n)
        assert successor != server
        assert children(successor) == [n.pid_of(1)]
        assert n.pid_of(0) == first
        assert running(first)  # the stopped fork server's other child, kept through its kill
        await until(lambda: gone(victim))  # its zombie, re-parented to the node's and reaped
        await n.expect(f"worker 1 (pid {victim}) died: exit status unknown; restarting in 0 s")
        await n.expect(f"the fork server (pid {server}) did not fork worker 1 within 5 s: killed it")
        await restarts(admin, died=1, stuck=0)
        await replaced(admin, ended=0, stalled=1)  # its kill here is not counted again as its end
        for _ in range(8):
            assert await get(port, "/v.bin") == (200, DATA)
        assert await n.stop() == 0
    assert "Traceback" not in n.text


async def test_a_node_whose_fork_server_is_stopped_stops(origin: Origin, tmp_path: Path) -> None:
    """The parent waited for its fork server to end after its workers had: a stopped one never did."""
    origin.put("/v.bin", DATA)
    cfg, port, _ = write_config(tmp_path, origin)
    async with node(cfg) as n:
        await n.expect("edgecache listening on")
        assert await get(port, "/v.bin") == (200, DATA)
        [server] = servers(n)
        os.kill(server, signal.SIGSTOP)
        assert await n.stop() == 0  # bounded by its deadline: a hang fails here
        assert not running(server)
