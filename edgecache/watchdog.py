"""A worker's proof of life: while its event loop turns, it stamps a heartbeat the parent reads and pushes back
faulthandler's deadline.

If the loop stops turning for `server.watchdog` seconds, faulthandler's own thread (C code that needs neither
the loop nor the GIL, so it runs whatever holds them) writes every thread's stack to stderr and ends the process
with status 1; the parent (edgecache.supervisor) starts another. A process that cannot do even that (stopped
whole, or blocked writing its dump) is killed by the parent once its heartbeat is twice that old.
"""

from __future__ import annotations

import asyncio
import faulthandler
import multiprocessing
import os
import signal
import time


class Heartbeats:
    """One timestamp per worker slot in shared memory: workers write theirs, the parent reads them; nobody blocks.

    time.monotonic is CLOCK_MONOTONIC, the same clock in every process of the machine.
    """

    __slots__ = ("_stamps",)

    def __init__(self, slots: int) -> None:
        self._stamps = multiprocessing.get_context("spawn").RawArray("d", slots)

    def stamp(self, slot: int) -> None:
        self._stamps[slot] = time.monotonic()

    def clear(self, slot: int) -> None:
        self._stamps[slot] = 0.0

    def last(self, slot: int) -> float | None:
        """When the slot's worker last stamped, or None if its current worker has not yet."""
        return self._stamps[slot] or None


async def keep_alive(beats: Heartbeats, slot: int, seconds: float) -> None:
    """Until cancelled: stamp the heartbeat and re-arm faulthandler's timer, a few times per `seconds`."""
    every = min(1.0, seconds / 4)
    try:
        while True:
            beats.stamp(slot)
            faulthandler.dump_traceback_later(seconds, exit=True)  # replaces the previous deadline
            await asyncio.sleep(every)
    finally:
        faulthandler.cancel_dump_traceback_later()


def install_test_hooks(loop: asyncio.AbstractEventLoop) -> None:
    """Test-only, and only when EDGECACHE_TEST_HOOKS=1 is in the environment the node starts with (never set it
    in production): SIGUSR2 blocks the worker's event loop for good, so the suite can watch a real worker get
    stuck, dump its stack and be replaced."""
    if os.environ.get("EDGECACHE_TEST_HOOKS") == "1":
        loop.add_signal_handler(signal.SIGUSR2, _block_the_loop_for_tests)


def _block_the_loop_for_tests() -> None:
    while True:
        time.sleep(60)
