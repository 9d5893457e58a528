"""proxy.expecting: a request that joined a fill is counted until it reads or leaves, and never keeps the fill."""

from __future__ import annotations

import asyncio
import gc
import weakref

from edgecache.proxy.fill import Fill


async def test_a_request_is_counted_until_released_or_dropped_and_its_going_wakes_the_producer() -> None:
    fill = Fill("k", 0, None, 1024)
    first, second = fill.expecting.expect(), fill.expecting.expect()
    assert len(fill.expecting) == 2
    changed = fill._changed
    first.release()
    first.release()  # once is all it counts
    assert (len(fill.expecting), changed.is_set()) == (1, True)
    changed = fill._changed
    del second  # dropped with the request's state: woken on the loop, in its next turn
    assert not fill.expecting
    async with asyncio.timeout(1):
        await changed.wait()


async def test_a_fill_let_go_is_freed_at_once_whoever_is_still_expected() -> None:
    was = gc.isenabled()
    gc.disable()  # freed by its count of references, not by a collection some time later
    try:
        fill = Fill("k", 0, None, 1024)
        expected = fill.expecting.expect()
        gone = weakref.ref(fill)
        del fill
        assert gone() is None
        expected.release()  # nothing to wake: no error
    finally:
        if was:
            gc.enable()
