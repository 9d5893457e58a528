"""Real edgecache processes for tests: started, awaited on their own log lines (never a sleep), stopped cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from edgecache.lifecycle import WORKER_NAME

ROOT = Path(__file__).resolve().parents[2]
_GIVEN: set[int] = set()
_TURN = itertools.count(random.randrange(10_000))  # where this run begins: not on the last run's ports
_LIMIT_THEN_EXEC = (
    "import os, resource, sys; n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def free_port() -> int:
    """A port to listen on later, chosen below the kernel's ephemeral range.

    Port 0 gives an ephemeral port, and between this check and the real bind the kernel may hand the same port
    to an outgoing connection (the edge's to its origin, the test's to the edge): the suite's rare "address
    already in use". Ports below the range are never picked for outgoing connections. A port is handed out once
    per process: a test asks for several before it binds any (a cluster takes six), and two random picks could
    be the same one. Within a range given by EDGECACHE_TEST_PORTS (a hundred ports, say) they are handed out in
    turn instead, again from the first once all were: a test's own ports are never the same.
    """
    lo, hi = _port_range()
    for _ in range(200):
        if os.environ.get("EDGECACHE_TEST_PORTS"):
            port = lo + next(_TURN) % (hi - lo)
        else:
            port = random.randrange(lo, hi)
            if port in _GIVEN:
                continue
            _GIVEN.add(port)
        with socket.socket() as s:
            # As every server the suite starts binds (the node's listeners, aiohttp's sites): a port whose last
            # server left connections in TIME_WAIT serves again at once, and only a listener holds it.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                s.listen()
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {lo}-{hi - 1}")


def _port_range() -> tuple[int, int]:
    """Where free_port picks: EDGECACHE_TEST_PORTS ("23200-23299") when several runs share a machine and each is
    given ports of its own, else the 12,000 ports below the ephemeral range; either split between pytest-xdist's
    processes, each a part of its own. A port handed out is not always bound at once, and some are never (a
    cluster member that is down): another process's pick of it must not reach this test's nodes (a signed hop
    answered by another test's cluster, which shares the key)."""
    given = os.environ.get("EDGECACHE_TEST_PORTS", "")
    if given:
        first, last = (int(x) for x in given.split("-"))
        lo, hi = first, last + 1
    else:
        hi = _ephemeral_floor()
        lo = max(1024, hi - 12_000)
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker.startswith("gw") and 1 < workers <= hi - lo:  # a range of fewer ports is the test's own
        part = (hi - lo) // workers
        lo += int(worker[2:]) * part
        hi = lo + part
    return lo, hi


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


async def wait_lines(proc: asyncio.subprocess.Process, needles: dict[bytes, int]) -> None:
    """Until each needle has appeared in as many log lines as asked, in whatever order the processes wrote."""
    assert proc.stderr is not None
    left = dict(needles)
    while any(n > 0 for n in left.values()):
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line, "edgecache exited early"
        for needle in left:
            if needle in line:
                left[needle] -= 1


async def wait_listening(proc: asyncio.subprocess.Process, needle: bytes) -> None:
    await wait_lines(proc, {needle: 1})


@asynccontextmanager
async def edge_process(
    *args: str, ready: dict[bytes, int], files: int | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m edgecache ARGS`, yielded once `ready` log lines appeared; SIGTERM at the end must exit 0.
    `files`: its limit of open file descriptors (soft and hard), for a test of what happens at that limit.

    The limit is set by a shim that then execs the node (same pid), never by a preexec_fn: a preexec_fn makes
    Popen fork() the whole test process instead of vfork(), on the loop, and the fork copies the page tables of
    every byte the session holds (34 ms for 800 MiB here, unloaded, against 0.4 ms by vfork; a loaded CI
    machine tripped the stall guard inside create_subprocess_exec)."""
    argv: tuple[str, ...] = (sys.executable, "-m", "edgecache", *args)
    if files is not None:
        argv = (sys.executable, "-c", _LIMIT_THEN_EXEC, str(files), *argv)
    proc = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_lines(proc, ready)
        yield proc
    except Exception:
        with contextlib.suppress(TimeoutError):  # the finally's stop says it
            await _stop(proc)
            await _show_rest(proc)
        raise
    finally:
        rc = await _stop(proc)
    assert rc == 0


async def _stop(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM, unless it has exited; its exit status."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 30)


async def _show_rest(proc: asyncio.subprocess.Process) -> None:
    """A failed test's node, stopped: what it logged that the test did not read, printed (pytest shows a failed
    test's output), which says what the node saw: a cut, a refused write."""
    assert proc.stderr is not None
    rest = await asyncio.wait_for(proc.stderr.read(), 5)  # its workers are gone: the pipe ends
    print(f"the node's log that the test did not read:\n{rest.decode(errors='replace')}")


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (its children, theirs, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # it exited meanwhile
                continue
            children.setdefault(int(stat.rpartition(")")[2].split()[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (a zombie has exited; only its parent has yet to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def states(**pids: int) -> str:
    """Each named process's state, parent, kernel wait channel and name, as /proc tells (what a wait that timed out
    was waiting on)."""
    said = []
    for name, pid in pids.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            wchan = Path(f"/proc/{pid}/wchan").read_text()
        except OSError:
            said.append(f"{name} {pid}: gone")
            continue
        comm, _, rest = stat.partition(" (")[2].rpartition(")")
        fields = rest.split()
        said.append(f"{name} {pid}: state {fields[0]}, parent {fields[1]}, wchan {wchan or '-'}, {comm}")
    return "; ".join(said)


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` now (an orphan re-parented to it is one)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        return [int(c) for task in tasks for c in (task / "children").read_text().split()]
    except OSError:  # it exited meanwhile
        return []


def fork_servers(parent: int) -> list[int]:
    """The children of `edgecache serve` that are multiprocessing's fork server (its command line says so), but for
    its workers: one the fork server forked has its command line, and is the node's child once that one has died."""
    found = []
    for child in set(children(parent)) - workers_below(parent):
        try:
            if b"forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            continue
    return found


def workers_below(parent: int) -> set[int]:
    """The workers running below `edgecache serve` (`parent`), by the name each gives itself (lifecycle.WORKER_NAME):
    the fork server's children, or the parent's own once that fork server has died."""
    found = set()
    for pid in descendants(parent):
        try:
            if Path(f"/proc/{pid}/comm").read_text().startswith(WORKER_NAME) and running(pid):
                found.add(pid)
        except OSError:  # it exited meanwhile
            continue
    return found


def gone(pid: int) -> bool:
    """Whether `pid` has been reaped (a zombie is not gone: its parent has yet to wait for it)."""
    return not Path(f"/proc/{pid}").exists()
