"""No end-to-end test may starve its event loop: a loop that does not turn for STALL_LIMIT fails the test.

A node serves every client from one loop per worker, so a callback that runs 250 ms stops every connection of
the worker for 250 ms; one that never returns stops the node (a 204 read twice once did). The probe is a callback
that reschedules itself every TICK and notes how late it ran; a thread notes where the loop's thread was while
a tick was overdue, so the failure says what blocked. It runs while the test's own coroutine runs, not around
it: between fixtures pytest-asyncio stops the loop, and time the loop spends stopped is not a stall. Nor is time
a thread of the process waited for a CPU (Linux counts it in /proc/self/task/*/schedstat): on a shared, loaded
test machine that is the scheduler's doing, not the code's (the loop's thread waits for a CPU, or for the GIL
held by a thread that waits for one), and a node starved of CPU is not what this tests. Nor is time in the
garbage collector (gc.callbacks): a full collection here walks everything the whole test session has built (a
late test saw 767 ms, the stack wherever the collection was triggered), while a node freezes what it built at
start (server.run: gc.freeze) and collects only its own garbage.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

STALL_LIMIT = 0.5  # seconds: 250 ms failed 1 run in 2 on a 2-core machine, on a thread holding the GIL (not yet found)
TICK = 0.02
WAIT_EVERY = 5  # ticks between two readings of the threads' CPU waits (by the watcher)
# With EDGECACHE_STALL_LOG set, the stack of a stall is taken from this lateness on, not only past STALL_LIMIT, and
# the log gets it: a near-miss says where it was (EDGECACHE_STALL_SEEN_MS, 150 unless set).
SEEN = float(os.environ.get("EDGECACHE_STALL_SEEN_MS", "150")) / 1000 if os.environ.get("EDGECACHE_STALL_LOG") else None


def cpu_waits() -> dict[str, float]:
    """Seconds each thread of this process has spent runnable but waiting for a CPU (none where Linux does not
    say; a thread may end while it is read)."""
    waits = {}
    try:
        threads = os.listdir("/proc/self/task")
    except OSError:
        return {}
    for tid in threads:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                waits[tid] = int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
    return waits


class GcClock:
    """Seconds spent in the garbage collector, summed (gc.callbacks tell when each collection starts and ends)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0

    def __call__(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self.total += time.perf_counter() - self._started
            self._started = 0.0


def starved(before: dict[str, float], after: dict[str, float]) -> float:
    """The longest any thread waited for a CPU between two readings."""
    return max((wait - before.get(tid, 0.0) for tid, wait in after.items()), default=0.0)


class StallProbe:
    """The worst lateness of a callback due every TICK: the longest the loop went without turning."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.worst = 0.0
        self.worst_stack = ""  # where the loop's thread was during the worst stall, when the watcher saw it
        self.over = 0  # ticks later than STALL_LIMIT
        self.starved = 0.0  # of the worst stall: time the thread waited for a CPU, not counted in it
        self.collecting = 0.0  # of the worst stall: time in the garbage collector, not counted in it
        self._gc = GcClock()
        self._gc_seen = 0.0
        self._due = 0.0
        self._waited: dict[str, float] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._loop_thread = threading.get_ident()
        self._seen_stack = ""  # of the stall in progress
        self._seen_polling = False  # the loop's thread was inside the selector's poll when the watcher looked
        self._seen_stage = 0  # of the stall in progress: 1 its stack taken past SEEN, 2 past STALL_LIMIT
        self.polling = 0.0  # stalls whose thread was in the poll, waiting for the GIL or the OS: not counted
        self._stopped = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="stall-probe", daemon=True)

    def start(self) -> None:
        gc.callbacks.append(self._gc)
        self._waited = cpu_waits()
        self._schedule(self.loop.time())
        self._watcher.start()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._note(self.loop.time() - self._due)  # a stall that lasted to the test's end has no tick after it
        self._stopped.set()
        self._watcher.join()
        gc.callbacks.remove(self._gc)

    def _schedule(self, now: float) -> None:
        self._due = now + TICK
        self._handle = self.loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        self._note(self.loop.time() - self._due)
        # Due from after the note: its reading of /proc/self/task is the probe's own time, no stall of the test's
        # (with 293 threads, late in a full run, one reading made the next tick 397 ms late).
        self._schedule(self.loop.time())

    def _note(self, late: float) -> None:
        stack, polling = self._seen_stack, self._seen_polling  # as the watcher saw the stall, not the reading below
        collecting, self._gc_seen = self._gc.total - self._gc_seen, self._gc.total
        waiting = 0.0
        if late - collecting > (SEEN or STALL_LIMIT):
            # Read every thread's CPU wait only now: read on the loop each tick, /proc/self/task's one file per
            # thread was itself the stall once the process held hundreds of threads (each read gives up the GIL
            # and waits to take it back). The watcher keeps the reading from before the stall. A near-miss (past
            # SEEN) is discounted too, so that the stall log does not list a loaded machine's waits as the code's.
            waiting = starved(self._waited, cpu_waits())
        late -= waiting + collecting
        if polling:  # the loop was not running code: another thread held the GIL, or the OS did not wake it
            self.polling = max(self.polling, late)
            late = 0.0
        if late > self.worst:
            self.worst, self.worst_stack = late, stack
            self.starved, self.collecting = waiting, collecting
        self._seen_stack, self._seen_polling, self._seen_stage = "", False, 0
        if late > STALL_LIMIT:
            self.over += 1

    def _watch(self) -> None:
        """Off the loop: once a tick is STALL_LIMIT overdue, take the loop thread's stack (once per stall); while
        none is overdue, take the threads' CPU waits every WAIT_EVERY ticks, the reading a stall is measured from."""
        ticks = 0
        while not self._stopped.wait(TICK):
            due = self._due
            ticks += 1
            if ticks % WAIT_EVERY == 0 and time.monotonic() - due < TICK:
                self._waited = cpu_waits()
            overdue = time.monotonic() - due
            stage = 2 if overdue > STALL_LIMIT else 1 if SEEN is not None and overdue > SEEN else 0
            if stage > self._seen_stage:  # a near-miss's stack is taken again once past the limit
                frame = sys._current_frames().get(self._loop_thread)
                if frame is not None and self._due == due:
                    self._seen_stack = "".join(traceback.format_stack(frame)[-12:])
                    self._seen_polling = stage == 2 and _in_poll(frame)  # judged past the limit only, as ever
                    self._seen_stage = stage

    def report(self) -> str:
        where = f"\nthe loop's thread during it:\n{self.worst_stack}" if self.worst_stack else ""
        return (
            f"the event loop stalled for {self.worst * 1000:.0f} ms (limit {STALL_LIMIT * 1000:.0f} ms; "
            f"{self.over} stall(s) over the limit; {self.starved * 1000:.0f} ms more waiting for a CPU and "
            f"{self.collecting * 1000:.0f} ms in the garbage collector, not counted): something on the loop blocked "
            f"or spun without awaiting{where}"
        )


def _in_poll(frame: FrameType) -> bool:
    """The thread is in the selector's poll: the loop is waiting for events, or, once they came, for the GIL that
    another thread holds. Either way none of the loop's callbacks is running, so it is no stall of the loop's."""
    return frame.f_code.co_name == "select" and frame.f_code.co_filename.endswith("selectors.py")


def _note_worst(name: str, probe: StallProbe) -> None:
    """With EDGECACHE_STALL_LOG set, each test's worst late tick is appended to that file, to see how near to the
    limit a run comes (a failure shows only the tests that passed it)."""
    if path := os.environ.get("EDGECACHE_STALL_LOG"):
        with open(path, "a") as f:
            f.write(f"{probe.worst * 1000:.0f} {name} {_process_size()}\n")
            if SEEN is not None and probe.worst > SEEN and probe.worst_stack:
                f.write("".join(f"    | {line}\n" for line in probe.worst_stack.splitlines()))


def _process_size() -> str:
    """The test process's resident size and threads: what a late test of a long run carries (a fork copies the
    first's page tables; the second share the GIL with the loop)."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    except (OSError, ValueError):
        return ""
    return f"(rss {int(status['VmRSS'].split()[0]) // 1024} MiB, {status['Threads'].strip()} threads)"


def probed(test: Callable[..., Coroutine[Any, Any, Any]], name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> Any:
        probe = StallProbe(asyncio.get_running_loop())
        probe.start()
        try:
            result = await test(*args, **kwargs)
        except BaseException as exc:
            probe.stop()
            _note_worst(name, probe)
            if probe.worst > STALL_LIMIT:
                exc.add_note(probe.report())
            raise
        probe.stop()
        _note_worst(name, probe)
        if probe.worst > STALL_LIMIT:
            pytest.fail(probe.report())
        return result

    return run


@pytest.fixture(autouse=True)
def no_loop_stall(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run an async test's coroutine under a StallProbe. (Sync tests run no loop of their own to watch.)"""
    node = request.node
    test = getattr(node, "obj", None)
    if not isinstance(node, pytest.Function) or not inspect.iscoroutinefunction(test) or hasattr(test, "hypothesis"):
        yield
        return
    node.obj = probed(test, node.nodeid)
    try:
        yield
    finally:
        node.obj = test
