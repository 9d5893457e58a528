"""Inclusive, victim or exclusive tiers: what each arrangement of memory and disk would fetch from the origin.

    nice python -m loadtest.tier_layouts [--seed 1] [--objects 3000] [--sessions 40000] [--versus 3GiB,8GiB]
                                         [--workers 1,2,4]

The node's tiers are inclusive: a fill goes to memory and to the disk, a disk hit is offered to memory and stays on
disk, so a slice in memory is (nearly always) on disk too and the two hold about --disk distinct bytes. nginx has
no memory tier (its RAM is the page cache), so loadtest/versus_nginx.py gives it the disk alone. This replays the
same slice requests (loadtest/efficiency.py's, the policy classes the tiers run: S3-FIFO in memory, DiskPolicy on
disk) through these arrangements and LRU + LRU, and prints each one's byte hit ratio and bytes written to disk:
  inclusive: the node as it is (efficiency.Tiers);
  victim: fills go to both tiers as now, a disk hit stays on disk, and what memory evicts is written to the disk
    when the disk lacks it (the disk keeps what memory drops);
  inclusive, disk on 2nd miss: the node with a doorkeeper before the disk: a slice's first fill goes to memory
    alone, its second to both (storage.ghosts-style admission of what was seen before);
  exclusive (cache.tiers): a slice is in one tier at a time. A fill goes to memory (to the disk only if memory
    refuses it); a disk hit moves the slice to memory; what memory evicts is written to the disk, a slice memory
    took from the disk to the disk's main queue with a full counter (storage.tiers; one never on disk enters as
    any fill does). Beside it, two other returns: to the queue and counter the slice had on disk ("place kept"),
    and as a new slice ("taken admitted as new": a hot slice that goes to memory and back re-enters the disk's
    small FIFO with no count, 5 points under inclusive tiers at 1 + 8 GiB).
Two streams: efficiency.py's workload at its table's budgets (1 + 8, 2 + 16, 4 + 32 GiB), and, for each --versus
content size, versus_nginx.py's seeded trace at its default budgets (256 MiB + 1 GiB) with, beside them, nginx
modelled as one LRU disk of 1 GiB (the trace is replayed in order, not 8 sessions at once as versus_nginx plays it);
then the versus traces over --workers worker processes (each its own memory tier of the full budget, as the node
runs them, over one disk): exclusive, a slice in one worker's memory is a miss for the others.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import OrderedDict
from collections.abc import Iterable, Iterator

from edgecache.config.values import parse_size
from edgecache.storage.policy import DiskPolicy, EvictionPolicy, LRUPolicy, S3FIFOPolicy
from loadtest.efficiency import SLICE, Tiers, workload
from loadtest.versus_nginx import make_trace

GiB = 2**30
BUDGETS = ((1, 8), (2, 16), (4, 32))  # efficiency.py's table, GiB of memory and of disk
VERSUS = (256 * 2**20, GiB)  # versus_nginx.py's default memory and disk


class Counted(Tiers):
    """efficiency.Tiers (the node: inclusive), counting the bytes written to disk."""

    written: int = 0

    def get(self, key: str, size: int) -> None:
        fill = key not in self.memory and key not in self.disk
        super().get(key, size)
        if fill:
            self.written += size


class Victim(Counted):
    """Fills to both tiers; what memory evicts is written to the disk if the disk lacks it."""

    def __init__(self, memory: EvictionPolicy, disk: EvictionPolicy) -> None:
        super().__init__(memory, disk)
        self.sizes: dict[str, int] = {}  # of the slices in memory

    def get(self, key: str, size: int) -> None:
        self.sizes[key] = size
        if key in self.memory:
            super().get(key, size)
            return
        disk_hit = key in self.disk
        _count(self, size, disk_hit)
        if disk_hit:
            self.disk.touch(key)
        else:
            self.written += size
            self.disk.admit(key, size)
        self._spill(self.memory.admit(key, size), key)

    def _spill(self, evicted: list[str], key: str) -> None:
        for old in evicted:
            size = self.sizes.pop(old)
            if old != key and old not in self.disk:
                self.written += size
                self.disk.admit(old, size)


class Exclusive(Counted):
    """One tier at a time, as storage.tiers runs them: a slice memory took from the disk goes back to the disk's
    main queue with a full counter (policy.S3FIFOPolicy.admit's `lent`); `place`: it goes back to the queue and
    counter it had instead (the study's first model); `new`: it is admitted as any fill."""

    def __init__(self, memory: EvictionPolicy, disk: DiskPolicy, back: str = "lent") -> None:
        super().__init__(memory, disk)
        self.policy = disk
        self.back = back
        self.sizes: dict[str, int] = {}  # of the slices in memory
        self.places: dict[str, tuple[int, int]] = {}  # slice in memory -> (queue, counter) it had on disk

    def get(self, key: str, size: int) -> None:
        if key in self.memory:
            super().get(key, size)
            return
        disk_hit = key in self.disk
        _count(self, size, disk_hit)
        if disk_hit:
            self.disk.touch(key)
            found = self.policy.queues.find(key)
            assert found is not None  # held: `key in self.disk`
            self.places[key] = (found[0], found[2])
            self.disk.remove(key)
        self.sizes[key] = size
        evicted = self.memory.admit(key, size)
        for old in evicted:
            self._write_back(old)

    def _write_back(self, key: str) -> None:
        size = self.sizes.pop(key)
        place = self.places.pop(key, None)
        self.written += size
        if place is None or self.back != "place":
            self.policy.admit(key, size, lent=place is not None and self.back == "lent")
            return
        queue, counter = place
        budget = self.policy.budget
        self.policy.resize(budget - size)  # room for it, made in the disk's own eviction order
        self.policy.resize(budget)
        self.policy.queues.push(queue, key, size, counter)


class Doorkeeper(Counted):
    """Inclusive, but a fill is written to the disk only on the slice's second miss (the first only remembered,
    among as many keys as twice the slices the disk holds)."""

    def __init__(self, memory: EvictionPolicy, disk: EvictionPolicy) -> None:
        super().__init__(memory, disk)
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.remember = max(1, 2 * disk.budget // SLICE)

    def get(self, key: str, size: int) -> None:
        if key in self.memory or key in self.disk:
            super().get(key, size)
            return
        _count(self, size, False)
        self.memory.admit(key, size)
        if key in self.seen:
            del self.seen[key]
            self.written += size
            self.disk.admit(key, size)
            return
        self.seen[key] = None
        if len(self.seen) > self.remember:
            self.seen.popitem(last=False)


def _count(tiers: Tiers, size: int, disk_hit: bool) -> None:
    """Tally a request memory missed (a disk hit or a fill), as Tiers.get does."""
    for t in (tiers.mem, tiers.all, tiers.dsk):
        t.requests += 1
        t.bytes += size
    if disk_hit:
        for t in (tiers.dsk, tiers.all):
            t.hits += 1
            t.hit_bytes += size


def layouts(memory: int, disk: int) -> dict[str, Counted]:
    return {
        "inclusive (the node)": Counted(S3FIFOPolicy(memory), DiskPolicy(disk)),
        "victim": Victim(S3FIFOPolicy(memory), DiskPolicy(disk)),
        "exclusive (cache.tiers)": Exclusive(S3FIFOPolicy(memory), DiskPolicy(disk)),
        "exclusive, place kept": Exclusive(S3FIFOPolicy(memory), DiskPolicy(disk), "place"),
        "exclusive, taken admitted as new": Exclusive(S3FIFOPolicy(memory), DiskPolicy(disk), "new"),
        "inclusive, disk on 2nd miss": Doorkeeper(S3FIFOPolicy(memory), DiskPolicy(disk)),
        "LRU + LRU (inclusive)": Counted(LRUPolicy(memory), LRUPolicy(disk)),
    }


def replay(stream: Iterable[tuple[str, int]], runs: dict[str, Counted]) -> dict[str, Counted]:
    for key, size in stream:
        for tiers in runs.values():
            tiers.get(key, size)
    return runs


def versus_stream(seed: int, content: int) -> Iterator[tuple[str, int]]:
    """The slices of versus_nginx.py's trace, in trace order."""
    trace = make_trace(seed, content, 6 * GiB)
    for session in trace.sessions:
        for r in session:
            for index in range(r.first // SLICE, r.last // SLICE + 1):
                yield f"{r.obj}:{index}", trace.slice_len(r.obj, index)


def workers_origin(seed: int, content: int, workers: int) -> dict[str, tuple[int, int]]:
    """versus_nginx.py's trace over `workers` processes, each with its own memory tier of the full budget (as the
    node gives each worker) over one shared disk, each session on a worker drawn at random (a connection stays on
    its worker): each layout's (origin bytes, bytes written to disk)."""
    trace = make_trace(seed, content, 6 * GiB)
    disks = {"inclusive": DiskPolicy(VERSUS[1]), "exclusive": DiskPolicy(VERSUS[1])}
    runs: dict[str, list[Counted]] = {
        "inclusive": [Counted(S3FIFOPolicy(VERSUS[0]), disks["inclusive"]) for _ in range(workers)],
        "exclusive": [Exclusive(S3FIFOPolicy(VERSUS[0]), disks["exclusive"]) for _ in range(workers)],
    }
    rnd = random.Random(f"workers {seed}")
    for session in trace.sessions:
        worker = rnd.randrange(workers)
        for r in session:
            for index in range(r.first // SLICE, r.last // SLICE + 1):
                for tiers in runs.values():
                    tiers[worker].get(f"{r.obj}:{index}", trace.slice_len(r.obj, index))
    return {
        name: (sum(t.all.bytes - t.all.hit_bytes for t in tiers), sum(t.written for t in tiers))
        for name, tiers in runs.items()
    }


def rows(label: str, runs: dict[str, Counted], lru: float) -> Iterator[str]:
    for name, t in runs.items():
        _, hit = t.all.ratio()
        origin = t.all.bytes - t.all.hit_bytes
        yield (
            f"| {label} | {name} | {t.mem.ratio()[1]:.1%} | {hit:.2%} ({(hit - lru) * 100:+.2f}) "
            f"| {origin / GiB:.3f} | {t.written / GiB:.1f} |"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--objects", type=int, default=3000)
    ap.add_argument("--sessions", type=int, default=40000)
    ap.add_argument("--versus", default="3GiB,8GiB", help="versus_nginx --content sizes, comma-separated ('' none)")
    ap.add_argument(
        "--workers", default="1,2,4", help="worker counts for the versus traces' multi-worker replay ('' none)"
    )
    args = ap.parse_args()
    args.workers = [int(w) for w in filter(None, args.workers.split(","))]
    print("| budgets | layout | memory byte hit | overall byte hit (vs LRU + LRU) | origin GiB | written to disk GiB |")
    print("|---|---|---|---|---|---|")
    for memory_gib, disk_gib in BUDGETS:
        runs = replay(workload(args.seed, args.objects, args.sessions), layouts(memory_gib * GiB, disk_gib * GiB))
        lru = runs["LRU + LRU (inclusive)"].all.ratio()[1]
        print("\n".join(rows(f"{memory_gib} + {disk_gib} GiB", runs, lru)), flush=True)
    for content in filter(None, args.versus.split(",")):
        runs = layouts(*VERSUS)
        runs["nginx: LRU disk alone"] = Counted(S3FIFOPolicy(0), LRUPolicy(VERSUS[1], 1.0))
        replay(versus_stream(args.seed, parse_size(content)), runs)
        lru = runs["LRU + LRU (inclusive)"].all.ratio()[1]
        print("\n".join(rows(f"versus_nginx --content {content}", runs, lru)), flush=True)
        for workers in args.workers:
            figures = workers_origin(args.seed, parse_size(content), workers)
            shown = ", ".join(f"{name} {o / GiB:.3f} GiB (written {w / GiB:.2f})" for name, (o, w) in figures.items())
            print(f"versus_nginx --content {content}, {workers} workers: origin {shown}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
