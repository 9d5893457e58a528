"""What bounds the disk tier's gain over LRU + LRU in loadtest/efficiency.py's replay.

    nice python -m loadtest.disk_bounds [--seed 1] [--objects 3000] [--sessions 40000] [--rate-sessions 400000]

The node's memory tier (S3-FIFO) admits every slice it misses, whether the disk then hits or fills it, so what it
holds, and so the stream of requests it sends to the disk, does not depend on the disk's policy. On that stream, at
each budget of efficiency.py's table, this replays disk policies that know more than any the node can run, and
prints the overall byte hit ratio each would give the pair (memory hits plus disk hits, of all bytes asked):
  lfu-history: the slices with the most requests so far, every count kept forever and never aged (no node can
    keep that history, and a change of what is popular would take it a long time to forget);
  lfu-object: the same, ranking a slice by its own count plus its object's (History.object_rank), which needs the
    object and the slice's position in the key and a curve learned over all objects;
  popularity-oracle: the slices whose long-run request rate on the disk is highest, the rates counted beforehand on
    a trace --rate-sessions long of the same objects with other sessions (it knows each slice's popularity, not
    its future requests);
  belady: the slice asked again farthest in the future is evicted (it knows this very trace's future).
The first three hold newcomers in a FIFO of 1% of the budget first, so a slice asked again at once is a hit for them
as for the node. They run the same heap: a slice leaves main in order of its rank, re-ranked when it is chosen.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable

from edgecache.storage.policy import DiskPolicy, LRUPolicy, S3FIFOPolicy
from loadtest.efficiency import Tiers, _slices, object_sizes, plays, workload

GiB = 2**30
BUDGETS = ((1, 8), (2, 16), (4, 32))  # efficiency.py's table, GiB of memory and of disk
SMALL_SHARE = 0.01
OBJECT_WEIGHT = 1 / 16  # of 1/32 to 1/2, the best for lfu-object at 4 + 32 GiB (78.48%; the others 78.28-78.47%)
Trace = list[tuple[str, int]]


def disk_stream(trace: Iterable[tuple[str, int]], memory: int) -> tuple[Trace, int]:
    """The requests the node's memory tier misses at budget `memory`, and the bytes it hits."""
    tier, missed, hit_bytes = S3FIFOPolicy(memory), [], 0
    for key, size in trace:
        if key in tier:
            tier.touch(key)
            hit_bytes += size
        else:
            missed.append((key, size))
            tier.admit(key, size)
    return missed, hit_bytes


def disk_rates(seed: int, objects: int, sessions: int) -> dict[int, Counter[str]]:
    """Per memory budget (GiB), each slice's requests reaching the disk over `sessions` other sessions."""
    rnd = random.Random(seed)
    sizes = object_sizes(rnd, objects)  # the same objects as workload(seed, ...), as it draws them first
    tiers = {m: S3FIFOPolicy(m * GiB) for m, _ in BUDGETS}
    counts: dict[int, Counter[str]] = {m: Counter() for m in tiers}
    for session in plays(random.Random(seed + 1_000_003), sizes, sessions):
        for obj, pos, length in session:
            for key, size in _slices(obj, sizes[obj], pos, length):
                for m, tier in tiers.items():
                    if key in tier:
                        tier.touch(key)
                    else:
                        counts[m][key] += 1
                        tier.admit(key, size)
    return counts


def ranked(stream: Trace, budget: int, rank: Callable[[str], float], seen: Callable[[str], None]) -> int:
    """Disk hit bytes of a small FIFO in front of a main that evicts its lowest-ranked slice first."""
    small: OrderedDict[str, int] = OrderedDict()
    main: dict[str, int] = {}
    heap: list[tuple[float, str]] = []
    small_bytes = main_bytes = hits = 0
    for key, size in stream:
        seen(key)
        if key in small or key in main:
            hits += size
            continue
        small[key] = size
        small_bytes += size
        while small_bytes + main_bytes > budget:
            if small_bytes > budget * SMALL_SHARE or not main:
                old, old_size = small.popitem(last=False)
                small_bytes -= old_size
                main[old] = old_size
                main_bytes += old_size
                heapq.heappush(heap, (rank(old), old))
                continue
            value, old = heapq.heappop(heap)
            if (now := rank(old)) > value:  # asked since it was ranked: ranked again, as a second chance
                heapq.heappush(heap, (now, old))
                continue
            main_bytes -= main.pop(old)
    return hits


class History:
    """Every request reaching the disk counted and kept, never aged: per slice, per object, and per slice index over
    all objects (how far into an object sessions go)."""

    def __init__(self) -> None:
        self.slices: Counter[str] = Counter()
        self.objects: Counter[str] = Counter()
        self.positions: Counter[int] = Counter()

    def see(self, key: str) -> None:
        obj, index = key.split(":")
        self.slices[key] += 1
        self.objects[obj] += 1
        self.positions[int(index)] += 1

    def slice_rank(self, key: str) -> float:
        return self.slices[key]

    def object_rank(self, key: str) -> float:
        """The slice's own count, plus its object's count scaled by how often its position is asked against the
        first slice's, over all objects: a slice asked once of an object asked often ranks above one of a rare one."""
        obj, index = key.split(":")
        share = (self.positions[int(index)] + 1) / (self.positions[0] + 1)
        return self.slices[key] + OBJECT_WEIGHT * self.objects[obj] * share


def belady(stream: Trace, budget: int) -> int:
    """Disk hit bytes when the slice asked again farthest ahead is evicted (the new one itself, if it is that)."""
    following: list[int] = [0] * len(stream)
    later: dict[str, int] = {}
    for n in range(len(stream) - 1, -1, -1):
        key = stream[n][0]
        following[n] = later.get(key, sys.maxsize)
        later[key] = n
    held: dict[str, tuple[int, int]] = {}  # key -> (next request, size)
    heap: list[tuple[int, str]] = []  # (-next request, key); stale entries skipped
    used = hits = 0
    for n, (key, size) in enumerate(stream):
        if key in held:
            hits += size
        else:
            used += size
        held[key] = (following[n], size)
        heapq.heappush(heap, (-following[n], key))
        while used > budget:
            far, old = heapq.heappop(heap)
            if held.get(old, (None, 0))[0] == -far:
                used -= held.pop(old)[1]
    return hits


def pair(memory: int, disk: int, trace: Trace, lru: bool) -> float:
    tiers = Tiers(LRUPolicy(memory), LRUPolicy(disk)) if lru else Tiers(S3FIFOPolicy(memory), DiskPolicy(disk))
    for key, size in trace:
        tiers.get(key, size)
    return tiers.all.ratio()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--objects", type=int, default=3000)
    ap.add_argument("--sessions", type=int, default=40000)
    ap.add_argument("--rate-sessions", type=int, default=400000)
    args = ap.parse_args()
    trace = list(workload(args.seed, args.objects, args.sessions))
    total = sum(size for _, size in trace)
    rates = disk_rates(args.seed, args.objects, args.rate_sessions)
    print(f"seed {args.seed}, {args.objects} objects, {args.sessions} sessions; rates from {args.rate_sessions}")
    print("overall byte hit ratio (disk byte hit ratio of the requests memory missed)")
    print("| memory | disk | LRU + LRU | target (+3) | node | lfu-history | lfu-object | popularity-oracle | belady |")
    print("|---|---|---|---|---|---|---|---|---|")
    for memory_gib, disk_gib in BUDGETS:
        memory, disk = memory_gib * GiB, disk_gib * GiB
        stream, memory_hits = disk_stream(trace, memory)
        asked = sum(size for _, size in stream)
        rate = rates[memory_gib]
        by_slice, by_object = History(), History()
        cells = []
        for hits in (
            ranked(stream, disk, by_slice.slice_rank, by_slice.see),
            ranked(stream, disk, by_object.object_rank, by_object.see),
            ranked(stream, disk, rate.__getitem__, lambda _: None),
            belady(stream, disk),
        ):
            cells.append(f"{(memory_hits + hits) / total:.2%} ({hits / asked:.1%})")
        lru, node = pair(memory, disk, trace, lru=True), pair(memory, disk, trace, lru=False)
        print(
            f"| {memory_gib} GiB | {disk_gib} GiB | {lru:.2%} | {lru + 0.03:.2%} | {node:.2%} | {' | '.join(cells)} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
