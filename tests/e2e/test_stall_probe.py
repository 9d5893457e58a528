"""The stall probe of tests/e2e/conftest.py can fail a test: a loop that blocks is caught and located, one that
awaits is not. (Sync tests, each with a loop of its own: the probe does not watch them.)"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.e2e.conftest import STALL_LIMIT, TICK, StallProbe, probed


def blocks_the_loop() -> None:
    time.sleep(STALL_LIMIT + 0.15)  # a blocking call, as a sync file or DNS read on the loop would be


async def blocking_test() -> None:
    await asyncio.sleep(2 * TICK)
    blocks_the_loop()
    await asyncio.sleep(2 * TICK)


async def awaiting_test() -> None:
    for _ in range(5):
        await asyncio.sleep(STALL_LIMIT / 2)  # as long as a stall in all, but the loop turns throughout


def test_a_blocked_loop_is_caught_and_located() -> None:
    async def run() -> StallProbe:
        probe = StallProbe(asyncio.get_running_loop())
        probe.start()
        await blocking_test()
        probe.stop()
        return probe

    probe = asyncio.run(run())
    assert probe.worst > STALL_LIMIT
    assert probe.over == 1
    assert "blocks_the_loop" in probe.worst_stack


def test_the_wrapper_fails_a_blocking_test_and_passes_an_awaiting_one() -> None:
    with pytest.raises(pytest.fail.Exception, match="the event loop stalled for"):
        asyncio.run(probed(blocking_test, "blocking")())
    asyncio.run(probed(awaiting_test, "awaiting")())


def collects_for(probe: StallProbe, seconds: float) -> None:
    """Hold the loop as the collector would, telling the probe's gc callback as the collector does."""
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        probe._gc("start", {})
        time.sleep(0.01)
        probe._gc("stop", {})


def test_time_in_the_garbage_collector_is_not_a_stall() -> None:
    """A full collection walks everything the test session holds: the session's doing, not the node's."""

    async def collecting_test() -> StallProbe:
        probe = StallProbe(asyncio.get_running_loop())
        probe.start()
        await asyncio.sleep(2 * TICK)
        collects_for(probe, STALL_LIMIT + 0.15)
        await asyncio.sleep(2 * TICK)
        probe.stop()
        return probe

    probe = asyncio.run(collecting_test())
    assert probe.worst < STALL_LIMIT
    assert probe.over == 0
    assert probe._gc.total > STALL_LIMIT  # it was there, and not counted
