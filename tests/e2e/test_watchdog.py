"""A worker that dies or gets stuck is replaced by the parent process, with one worker as with several, and the
node answers again with the same bytes; a stop ends every process, even while a restart waits out its backoff."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from edgecache.config import build
from edgecache.errors import ConfigError
from tests.e2e.procs import ROOT, descendants, free_port, running
from tests.e2e.test_operations import metric
from tests.origin import Origin

DATA = bytes((i * 7 + i // 251) % 256 for i in range(300_000))
CONFIG = """
[server]
listen = ["127.0.0.1:{port}"]
workers = {workers}
watchdog = {watchdog}
[admin]
listen = "127.0.0.1:{admin}"
[cache]
dir = "{cache}"
disk = "64MiB"
memory = "16MiB"
{sites}"""
SITE = '[[sites]]\nname = "{name}"\nhosts = ["{host}"]\norigins = ["{origin}"]\n'
WAIT = 30.0  # seconds any one expected event may take on a loaded machine


class Node:
    """`edgecache serve` as a real process tree, its stderr (the parent's and the workers' logs) kept whole."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._more = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode(errors="replace"))
            self._more.set()
        self._more.set()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    async def expect(self, needle: str, count: int = 1) -> list[str]:
        """Until `count` log lines contain `needle`; those lines."""
        async with asyncio.timeout(WAIT):
            while len(found := [line for line in self.lines if needle in line]) < count:
                assert not self._reader.done(), f"edgecache exited early; log:\n{self.text}"
                self._more.clear()
                await self._more.wait()
        return found

    def pid_of(self, worker: int) -> int:
        """The pid of the worker the parent started last for slot `worker`."""
        started = [line for line in self.lines if f"worker {worker} started: pid " in line]
        return int(started[-1].rsplit(" ", 1)[1])

    async def stop(self) -> int:
        """SIGTERM to the parent; its exit status, and every process it started gone."""
        tree = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(self.proc.wait(), WAIT)
        await asyncio.wait_for(self._reader, WAIT)
        await until(lambda: not any(running(pid) for pid in tree))
        return rc


@contextlib.asynccontextmanager
async def node(config: Path, **env: str) -> AsyncIterator[Node]:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "edgecache", "serve", "--config", str(config)),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
        start_new_session=True,
    )
    n = Node(proc)
    try:
        yield n
    finally:
        if proc.returncode is None:  # a failed test: the workers die with the parent (lifecycle.die_with_parent)
            with contextlib.suppress(ProcessLookupError):  # exited, not yet waited for
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        n._reader.cancel()


async def until(ok: Callable[[], bool], explain: Callable[[], str] = lambda: "") -> None:
    """Poll something another process changes, with a deadline; past it, `explain()` says what was seen."""
    deadline = time.monotonic() + WAIT
    while not ok():
        assert time.monotonic() < deadline, f"not reached in time {explain()}".rstrip()
        await asyncio.sleep(0.05)


async def get(port: int, path: str, host: str = "video.test") -> tuple[int, bytes]:
    headers = {"Host": host, "Connection": "close"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as s,
        s.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r,
    ):
        return r.status, await r.read()


async def metrics_until(admin: int, shows: Callable[[str], bool], wanted: str) -> None:
    """Until the admin /metrics `shows` what is wanted (the admin listener may itself be restarting meanwhile)."""
    deadline = time.monotonic() + WAIT
    seen = ""
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                seen = await r.text()
        if shows(seen):
            return
        assert time.monotonic() < deadline, f"wanted {wanted}; /metrics has:\n{seen}"
        await asyncio.sleep(0.1)


async def restarts(admin: int, died: int, stuck: int) -> None:
    """Until the admin /metrics shows these restart counts."""

    def shows(seen: str) -> bool:
        name = "edgecache_worker_restarts_total"
        counts = [metric(seen, name, reason=k) for k in ("died", "stuck")]
        return counts == [died, stuck] and all(f'{name}{{reason="{k}"}}' in seen for k in ("died", "stuck"))

    await metrics_until(admin, shows, f"restarts died={died} stuck={stuck}")


def write_config(
    tmp_path: Path, origin: Origin, *, workers: int = 1, watchdog: float = 10, admin: int = 0
) -> tuple[Path, int, int]:
    """The config file, the client port and the admin port."""
    cfg, port, admin = tmp_path / "edge.toml", free_port(), admin or free_port()
    sites = SITE.format(name="videos", host="video.test", origin=origin.url)
    values = {"workers": workers, "watchdog": watchdog, "cache": tmp_path / "cache", "sites": sites}
    cfg.write_text(CONFIG.format(port=port, admin=admin, **values))
    return cfg, port, admin


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_killed_worker_is_restarted_and_the_node_answers(origin: Origin, tmp_path: Path, workers: int) -> None:
    origin.put("/v.bin", DATA)
    cfg, port, admin = write_config(tmp_path, origin, workers=workers)
    victim_slot = workers - 1  # with two workers, the one without the admin listener: its count shows on the other's
    async with node(cfg) as n:
        await n.expect("edgecache listening on", workers)
        await n.expect("admin listening on")
        assert await get(port, "/v.bin") == (200, DATA)
        assert origin.hits["/v.bin"] == 1
        await restarts(admin, died=0, stuck=0)
        victim = n.pid_of(victim_slot)
        os.kill(victim, signal.SIGKILL)
        # Sent while the worker is gone: the parent keeps its listener open, so the connection waits in the
        # backlog for the next worker (or goes to the other one) instead of being refused.
        assert await get(port, "/v.bin") == (200, DATA)
        await n.expect(f"worker {victim_slot} (pid {victim}) died: killed by SIGKILL; restarting in 0 s")
        assert not running(victim)  # reaped by the parent, not left a zombie
        await n.expect(f"worker {victim_slot} started: pid ", 2)
        await n.expect("edgecache listening on", workers + 1)
        await restarts(admin, died=1, stuck=0)
        assert await get(port, "/v.bin") == (200, DATA)
        assert await n.stop() == 0
    assert "stuck" not in n.text


async def test_a_death_is_counted_at_once_not_when_its_successor_starts(origin: Origin, tmp_path: Path) -> None:
    """A worker that keeps dying young is restarted after a backoff (1 s the second time). Its death is counted
    on /metrics (the other worker's) during the backoff already: the count is read from the parent's memory at each
    scrape. Before, each new worker was handed the count as it started, and a crash loop showed one death fewer
    than the log until the next start."""
    cfg, _port, admin = write_config(tmp_path, origin, workers=2)
    async with node(cfg) as n:
        await n.expect("edgecache listening on", 2)
        await n.expect("admin listening on")
        for died, delay in ((1, 0), (2, 1)):
            victim = n.pid_of(1)
            os.kill(victim, signal.SIGKILL)
            await n.expect(f"worker 1 (pid {victim}) died: killed by SIGKILL; restarting in {delay} s")
            if delay:
                async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                    seen = await r.text()
                counts = [metric(seen, "edgecache_worker_restarts_total", reason=k) for k in ("died", "stuck")]
                assert counts == [2, 0]  # (the parent counts before it logs)
            await n.expect("worker 1 started: pid ", 1 + died)
            await n.expect("edgecache listening on", 2 + died)
        await restarts(admin, died=2, stuck=0)
        assert await n.stop() == 0


async def test_a_stuck_loop_logs_its_stack_and_the_worker_is_replaced(origin: Origin, tmp_path: Path) -> None:
    origin.put("/v.bin", DATA)
    cfg, port, admin = write_config(tmp_path, origin, watchdog=3)
    async with node(cfg, EDGECACHE_TEST_HOOKS="1") as n:
        await n.expect("admin listening on")
        assert await get(port, "/v.bin") == (200, DATA)
        victim = n.pid_of(0)
        os.kill(victim, signal.SIGUSR2)  # the test hook: the worker's loop blocks for good
        [line] = await n.expect(f"worker 0 (pid {victim}) stuck: its loop had not turned for ")
        assert line.rstrip().endswith("restarting in 0 s")
        # faulthandler's dump, written by the stuck worker itself before it exited
        assert "Timeout (0:00:03)!" in n.text
        assert " in _block_the_loop_for_tests\n" in n.text
        await n.expect("worker 0 started: pid ", 2)
        await restarts(admin, died=0, stuck=1)
        assert await get(port, "/v.bin") == (200, DATA)
        assert await n.stop() == 0


async def test_a_stopped_worker_is_killed_by_the_parent_and_replaced(origin: Origin, tmp_path: Path) -> None:
    """SIGSTOP stops the whole worker, faulthandler's thread too: only the parent's heartbeat check sees it."""
    origin.put("/v.bin", DATA)
    cfg, port, admin = write_config(tmp_path, origin, watchdog=3)
    async with node(cfg) as n:
        await n.expect("admin listening on")
        assert await get(port, "/v.bin") == (200, DATA)
        victim = n.pid_of(0)
        os.kill(victim, signal.SIGSTOP)
        # Sent to the stopped worker's listener: answered by its successor.
        assert await get(port, "/v.bin") == (200, DATA)
        await n.expect("worker 0: no heartbeat for ")
        await n.expect(f"worker 0 (pid {victim}) stuck: its loop had not turned for ")
        assert not running(victim)
        await restarts(admin, died=0, stuck=1)
        assert await n.stop() == 0


async def test_sigterm_during_a_restart_backoff_ends_every_process(origin: Origin, tmp_path: Path) -> None:
    """Worker 0 cannot start (its admin port is taken): its restarts wait longer and longer; worker 1 serves."""
    origin.put("/v.bin", DATA)
    cfg, port, admin = write_config(tmp_path, origin, workers=2)
    with socket.socket() as taken:
        async with node(cfg) as n:
            # Taken once the parent found it free and started worker 0, which binds it only after importing the
            # code and opening the node (the parent refuses to start on a port taken before).
            await n.expect("worker 0 started: pid ")
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # it may hold TIME_WAITs (procs.free_port)
            taken.bind(("127.0.0.1", admin))
            taken.listen()
            await n.expect("worker 0 (pid ", 4)  # its fourth death
            # Meanwhile worker 0's listener is closed: every new connection goes to worker 1.
            for _ in range(10):
                assert await get(port, "/v.bin") == (200, DATA)
            delays = [line.rstrip().rsplit(" ", 2)[1] for line in n.lines if "worker 0 (pid " in line]
            assert delays == ["0", "1", "2", "4"]
            tree = descendants(n.proc.pid)
            # Worker 1, the fork server and multiprocessing's resource tracker: worker 0 is waited for.
            assert len(tree) == 3
            assert n.pid_of(1) in tree
            assert await n.stop() == 0  # 4 s before worker 0's next start
            assert not any(running(pid) for pid in tree)
    assert len([line for line in n.lines if "worker 0 started: pid " in line]) == 4
    assert "worker 1 (pid " in n.lines[-1]
    assert n.lines[-1].rstrip().endswith("stopped: exited with status 0")


async def test_a_replaced_worker_serves_the_config_reloaded_before(origin: Origin, tmp_path: Path) -> None:
    """The parent reads the file again on SIGHUP too: a worker it starts later serves the reloaded sites."""
    origin.put("/v.bin", DATA)
    cfg, port, _ = write_config(tmp_path, origin)
    async with node(cfg) as n:
        await n.expect("admin listening on")
        assert (await get(port, "/v.bin", host="new.test"))[0] == 421
        cfg.write_text(cfg.read_text() + SITE.format(name="new", host="new.test", origin=origin.url))
        n.proc.send_signal(signal.SIGHUP)
        await n.expect("reloaded ")
        assert await get(port, "/v.bin", host="new.test") == (200, DATA)
        os.kill(n.pid_of(0), signal.SIGKILL)
        await n.expect("edgecache listening on", 2)
        assert await get(port, "/v.bin", host="new.test") == (200, DATA)
        assert await n.stop() == 0


async def test_a_reload_asked_for_while_the_workers_start_is_done_by_each(origin: Origin, tmp_path: Path) -> None:
    """A worker took SIGHUP and SIGUSR1 only once its loop handled them: one sent while it was still importing
    killed it (the signals' default action), and one sent after that, until its loop was up, was ignored, so the
    worker kept the config it was started with while the others (and its successors) served the new one."""
    origin.put("/v.bin", DATA)
    cfg, port, _ = write_config(tmp_path, origin, workers=2)
    async with node(cfg) as n:
        await n.expect("worker 1 started: pid ")
        cfg.write_text(cfg.read_text() + SITE.format(name="new", host="new.test", origin=origin.url))
        n.proc.send_signal(signal.SIGHUP)
        n.proc.send_signal(signal.SIGUSR1)
        await n.expect("edgecache listening on", 2)
        reloads = await n.expect("reloaded ", 2)
        assert sorted(line.split()[2] for line in reloads) == ["w0", "w1"]
        for _ in range(8):  # new connections, spread over both workers
            assert await get(port, "/v.bin", host="new.test") == (200, DATA)
        assert await n.stop() == 0
    assert "died" not in n.text
    assert "worker 0 started: pid " not in n.text.split("worker 1 started: pid ", 1)[1]


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_cache_directory_unusable_at_start_is_out_of_service_and_the_node_serves(
    origin: Origin, tmp_path: Path, workers: int
) -> None:
    """A disk that fails is taken out of service and its objects fetched from origin, from the start too (a volume
    the node's user may not write, a read-only mount). One worker did so; with several, each one died at start on
    the file the workers share their purges through, kept in that directory, and was started again for good."""
    origin.put("/v.bin", DATA)
    cfg, port, _ = write_config(tmp_path, origin, workers=workers)
    (tmp_path / "cache").write_bytes(b"")  # a file where the directory should be: every open in it fails
    async with node(cfg) as n:
        await n.expect("edgecache listening on", workers)
        await n.expect("out of service", workers)
        for _ in range(4):
            assert await get(port, "/v.bin") == (200, DATA)
        assert await n.stop() == 0
    assert "died" not in n.text
    assert "Traceback" not in n.text


async def test_a_killed_parent_takes_its_workers_with_it(origin: Origin, tmp_path: Path) -> None:
    """No orphan keeps serving (and holding the port and the disk tier) after kill -9 of `edgecache serve`."""
    origin.put("/v.bin", DATA)
    cfg, port, _ = write_config(tmp_path, origin, workers=2)
    async with node(cfg) as n:
        await n.expect("edgecache listening on", 2)
        assert await get(port, "/v.bin") == (200, DATA)
        workers = {n.pid_of(0), n.pid_of(1)}
        assert workers <= descendants(n.proc.pid)
        n.proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(n.proc.wait(), WAIT) == -signal.SIGKILL
        await until(lambda: not any(running(pid) for pid in workers))


def test_watchdog_is_off_at_0_and_at_least_a_second_otherwise() -> None:
    base: dict[str, object] = {"sites": [{"name": "v", "hosts": ["v.test"], "origins": ["http://10.0.0.1"]}]}
    assert build(base, "f.toml", Path("/etc")).watchdog == 10.0
    assert build({**base, "server": {"watchdog": 0}}, "f.toml", Path("/etc")).watchdog == 0.0
    assert build({**base, "server": {"watchdog": 2.5}}, "f.toml", Path("/etc")).watchdog == 2.5
    for bad in (0.5, -1, "10s", True):
        with pytest.raises(ConfigError) as info:
            build({**base, "server": {"watchdog": bad}}, "f.toml", Path("/etc"))
        assert [p.split(": ")[1] for p in info.value.problems] == ["server.watchdog"]
