"""A copy of a purge that arrives while the purge is being applied (a peer's pass-on beside this node's own
purge-log round) is answered once the purge is applied here, not at once: its 200 tells the peer that passed it
on that this node has it. CI failed so once: a node's admin API answered a pass-on 200 while its purge-log round
was still writing the same purge's record."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgecache.cluster.purgesync import apply_entry
from edgecache.config import Site
from edgecache.core.purge import Entry
from edgecache.storage.disk import DiskTier
from edgecache.storage.memory import MemoryTier
from edgecache.storage.store import Store

MiB = 2**20
SITES = (Site(name="videos", hosts=("video.test",), origins=("http://127.0.0.1:9",)),)
ENTRY = Entry("node0~1a2b3c4d", 1, "url", "videos", "video.test", "/p")


async def copy_during_first(store: Store, monkeypatch: pytest.MonkeyPatch, fails: bool) -> tuple[bool, bool]:
    """The first application held in its record's write until a copy has started; what the copy returned, and
    whether the purge was applied when it returned."""
    invalidate, waiting, go = store.invalidate, asyncio.Event(), asyncio.Event()

    async def held(primary: str) -> None:
        waiting.set()
        monkeypatch.setattr(store, "invalidate", invalidate)  # the copy's own application (after a failure) goes on
        await go.wait()
        if fails:
            raise OSError("the first application's disk failed")
        await invalidate(primary)

    monkeypatch.setattr(store, "invalidate", held)
    first = asyncio.create_task(apply_entry(store, SITES, ENTRY, 0.0))
    await waiting.wait()  # the first application has claimed the purge and waits in its record's write
    assert store.applying() == (ENTRY,)

    async def copy() -> tuple[bool, bool]:
        new = await apply_entry(store, SITES, ENTRY, 0.0)
        return new, store.sync.has(ENTRY.origin, ENTRY.seq)

    second = asyncio.create_task(copy())
    asyncio.get_running_loop().call_soon(go.set)  # after the copy's first step, whatever that step does
    if fails:
        with pytest.raises(OSError, match="first application"):
            await first
    else:
        assert await first is True
    return await second


@pytest.mark.parametrize("fails", [False, True])
async def test_a_copy_of_a_purge_being_applied_returns_once_it_is_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: bool
) -> None:
    """Applied by the first: the copy returns False (not new) after it. The first failed (retracted): the copy
    applies it itself."""
    store = Store(MemoryTier(MiB), DiskTier(tmp_path, 64 * MiB, threads=1))
    try:
        assert await copy_during_first(store, monkeypatch, fails) == (fails, True)
        assert store.applying() == ()
        assert await apply_entry(store, SITES, ENTRY, 0.0) is False  # and once applied, a third copy is not new
    finally:
        store.close_purge_log()
        store.disk.close()
