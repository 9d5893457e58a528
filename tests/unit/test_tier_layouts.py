"""loadtest.tier_layouts: the three arrangements of memory and disk worked out by hand on one-byte slices."""

from __future__ import annotations

from edgecache.config.values import parse_size
from edgecache.storage.policy import MAIN, MAX_FREQ, SMALL, DiskPolicy, S3FIFOPolicy
from loadtest.efficiency import SLICE
from loadtest.tier_layouts import (
    VERSUS,
    Counted,
    Doorkeeper,
    Exclusive,
    Victim,
    layouts,
    replay,
    versus_stream,
    workers_origin,
)
from loadtest.versus_nginx import make_trace


def two_passes(n: int) -> list[str]:
    return [f"{i}:0" for i in range(n)] * 2


def run(tiers: Counted, keys: list[str]) -> Counted:
    for key in keys:
        tiers.get(key, 1)
    return tiers


def test_exclusive_tiers_hold_memory_plus_disk_distinct_slices() -> None:
    # 20 slices twice over 8 bytes of memory and 12 of disk: inclusive, the disk holds the last 12 fills and memory
    # the last 8 of them, so the second pass finds none; exclusive, the disk holds what memory evicted, all 20 fit.
    inclusive = run(Counted(S3FIFOPolicy(8), DiskPolicy(12)), two_passes(20))
    exclusive = run(Exclusive(S3FIFOPolicy(8), DiskPolicy(12)), two_passes(20))
    assert (inclusive.all.hits, inclusive.written) == (0, 40)
    assert (exclusive.all.hits, exclusive.mem.hits, exclusive.dsk.hits) == (20, 0, 20)
    # Each of the first 12 memory evictions and each slice moved back out of memory in the second pass: one write.
    assert exclusive.written == 12 + 20
    assert len(exclusive.memory) + len(exclusive.disk) == 20


def test_victim_tiers_keep_what_memory_drops_when_the_disk_lacks_it() -> None:
    victim = run(Victim(S3FIFOPolicy(8), DiskPolicy(12)), two_passes(20))
    # Fills go to both tiers as in the node: the disk's FIFO has dropped 0-7 for 12-19 before memory evicts 12-19.
    assert victim.all.hits == run(Counted(S3FIFOPolicy(8), DiskPolicy(12)), two_passes(20)).all.hits == 0
    assert victim.written == 40


def test_a_slice_moved_to_memory_returns_to_the_disks_main_with_a_full_counter() -> None:
    # As storage.tiers writes it back (DiskTier.put's `lent`): a fill memory evicts enters the small FIFO.
    tiers = Exclusive(S3FIFOPolicy(8), DiskPolicy(100))
    tiers.policy.queues.push(SMALL, "hot:0", 1, 0)  # on disk, on probation
    run(tiers, ["hot:0", "new:0"])  # a disk hit, moved to memory; a fill kept in memory
    assert ("hot:0" in tiers.disk, "new:0" in tiers.disk) == (False, False)
    run(tiers, [f"{i}:0" for i in range(8)])  # memory's 9th and 10th slices evict the first two, never asked again
    assert tiers.policy.queues.find("hot:0") == (MAIN, 1, MAX_FREQ)
    assert tiers.policy.queues.find("new:0") == (SMALL, 1, 0)
    new = Exclusive(S3FIFOPolicy(8), DiskPolicy(100), back="new")
    new.policy.queues.push(SMALL, "hot:0", 1, 0)
    run(new, ["hot:0", "new:0", *(f"{i}:0" for i in range(8))])
    assert new.policy.queues.find("hot:0") == (SMALL, 1, 0)


def test_a_slice_moved_to_memory_returns_to_its_place_on_disk() -> None:
    tiers = Exclusive(S3FIFOPolicy(8), DiskPolicy(100), back="place")
    tiers.policy.queues.push(MAIN, "hot:0", 1, 1)  # on disk, in main with one reuse counted
    tiers.get("hot:0", 1)  # a disk hit: counted (2), moved to memory
    assert "hot:0" not in tiers.disk
    assert tiers.places == {"hot:0": (MAIN, 2)}
    run(tiers, [f"{i}:0" for i in range(8)])  # memory's eighth fill evicts it, never asked again in memory
    assert tiers.policy.queues.find("hot:0") == (MAIN, 1, 2)
    assert "hot:0" not in tiers.memory
    assert tiers.places == {}


def test_the_doorkeeper_writes_a_slice_to_disk_on_its_second_miss_only() -> None:
    tiers = Doorkeeper(S3FIFOPolicy(8), DiskPolicy(5 * SLICE))  # remembers 10 keys
    run(tiers, ["a:0"])
    assert ("a:0" in tiers.memory, "a:0" in tiers.disk, tiers.written) == (True, False, 0)
    run(tiers, [f"{i}:0" for i in range(8)])  # a goes from memory; the disk lacks it
    assert ("a:0" in tiers.memory, tiers.written) == (False, 0)
    run(tiers, ["a:0"])  # its second miss: written
    assert ("a:0" in tiers.disk, tiers.written, tiers.all.hits) == (True, 1, 0)
    run(tiers, [f"{i}:0" for i in range(100, 110)])  # 10 more first misses: the oldest remembered are forgotten
    assert list(tiers.seen) == [f"{i}:0" for i in range(100, 110)]


def test_with_several_workers_an_exclusive_slice_in_one_workers_memory_is_a_miss_for_the_others() -> None:
    # Two workers' memories over one disk: the slice worker 0 took from the disk is not there for worker 1.
    disk = DiskPolicy(100)
    first, second = Exclusive(S3FIFOPolicy(8), disk), Exclusive(S3FIFOPolicy(8), disk)
    run(first, ["a:0"])  # filled into worker 0's memory
    run(second, ["a:0"])  # not on disk: worker 1 fills it again
    assert (first.all.hits, second.all.hits) == (0, 0)
    shared = DiskPolicy(100)
    one, two = Counted(S3FIFOPolicy(8), shared), Counted(S3FIFOPolicy(8), shared)
    run(one, ["a:0"])
    run(two, ["a:0"])  # inclusive: on the shared disk
    assert (one.all.hits, two.all.hits, two.dsk.hits) == (0, 1, 1)


def test_one_worker_replays_as_the_table_and_exclusive_fetches_each_slice_once_at_three_gib() -> None:
    content = parse_size("3GiB")
    runs = replay(versus_stream(1, content), layouts(*VERSUS))
    one = workers_origin(1, content, 1)
    inclusive, exclusive = runs["inclusive (the node)"].all, runs["exclusive (cache.tiers)"].all
    assert one["inclusive"][0] == inclusive.bytes - inclusive.hit_bytes
    # 256 MiB + 1 GiB hold the trace's 1.24 GiB of distinct slices: exclusive, each is fetched once.
    assert one["exclusive"][0] == exclusive.bytes - exclusive.hit_bytes
    assert one["exclusive"][0] == make_trace(1, content, 6 * 2**30).summary()["distinct_slice_bytes"]
    assert one["inclusive"][0] > one["exclusive"][0]
    assert workers_origin(1, content, 2)["exclusive"][0] > one["exclusive"][0]
