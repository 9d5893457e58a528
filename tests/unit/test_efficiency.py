"""The cache-efficiency replay (loadtest/efficiency.py): its bookkeeping adds up and it is deterministic."""

from __future__ import annotations

from loadtest.efficiency import replay, workload


def test_replay_tallies_add_up_and_repeat() -> None:
    first = replay(seed=3, objects=200, sessions=400, memory=64 * 2**20, disk=256 * 2**20)
    again = replay(seed=3, objects=200, sessions=400, memory=64 * 2**20, disk=256 * 2**20)
    total = sum(size for _, size in workload(3, 200, 400))
    for name, t in first.items():
        assert t.all.bytes == t.mem.bytes == total
        assert t.dsk.requests == t.mem.requests - t.mem.hits  # the disk sees exactly what memory missed
        assert t.all.hits == t.mem.hits + t.dsk.hits
        assert t.all.hit_bytes == t.mem.hit_bytes + t.dsk.hit_bytes
        assert (t.mem, t.dsk, t.all) == (again[name].mem, again[name].dsk, again[name].all)
    # The two policies share the same memory-tier budget and see the same requests.
    assert first["s3fifo"].mem.requests == first["lru"].mem.requests
