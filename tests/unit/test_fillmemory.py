"""proxy.fillmemory: fills take their share first come, first served, and what one gives up is never lost."""

from __future__ import annotations

import asyncio

import pytest

from edgecache.errors import Busy
from edgecache.proxy.fillmemory import FillMemory


async def test_takes_at_once_within_the_limit_and_waits_in_turn_beyond_it() -> None:
    memory = FillMemory(100, 5)
    assert await memory.take(60) == 60
    big = asyncio.ensure_future(memory.take(70))
    await asyncio.sleep(0)
    small = asyncio.ensure_future(memory.take(10))  # would fit now, but comes after the big one
    await asyncio.sleep(0)
    assert (memory.held, memory.waiting, big.done(), small.done()) == (60, 2, False, False)
    memory.give(60)
    assert await big == 70
    assert await small == 10
    assert (memory.held, memory.peak, memory.waiting) == (80, 80, 0)


async def test_nothing_takes_no_turn() -> None:
    memory = FillMemory(100, 5)
    await memory.take(100)
    waiting = asyncio.ensure_future(memory.take(1))
    await asyncio.sleep(0)
    assert await memory.take(0) == 0  # an empty body, behind one that waits
    assert (memory.held, memory.waiting) == (100, 1)
    memory.give(100)
    assert await waiting == 1


async def test_more_than_the_limit_is_the_whole_limit() -> None:
    memory = FillMemory(100, 5)
    assert await memory.take(1000) == 100
    memory.give(100)
    assert memory.held == 0


async def test_a_wait_that_runs_out_is_busy_and_takes_nothing() -> None:
    memory = FillMemory(100, 0.01)
    await memory.take(100)
    with pytest.raises(Busy, match=r"held their memory \(100 bytes\) for 0.01 s"):
        await memory.take(1)
    assert (memory.held, memory.waiting) == (100, 0)


async def test_one_given_up_at_the_head_lets_those_behind_it_go() -> None:
    memory = FillMemory(100, 5)
    await memory.take(50)
    head = asyncio.ensure_future(memory.take(100))
    await asyncio.sleep(0)
    behind = asyncio.ensure_future(memory.take(50))
    await asyncio.sleep(0)
    head.cancel()
    assert await behind == 50
    assert memory.held == 100


async def test_one_granted_in_the_turn_it_is_cancelled_gives_it_back() -> None:
    memory = FillMemory(100, 5)
    await memory.take(100)
    waiter = asyncio.ensure_future(memory.take(100))
    await asyncio.sleep(0)
    memory.give(100)  # granted now, but the waiter has not run yet
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (memory.held, memory.waiting) == (0, 0)
