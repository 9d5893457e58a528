"""Cache efficiency: a video workload replayed through the cache's own admission/eviction code, against LRU.

    python -m loadtest.efficiency [--seed 1] [--objects 3000] [--sessions 40000] [--warm 0]
    python -m loadtest.efficiency --startup 1000000    # how long the disk tier takes to open that many slices

The workload is seeded and player-like: Zipf(0.9) popularity over a few thousand objects of mixed sizes
(short clips, episodes, films), sessions that start at the beginning (most) or at a seek, play on in 2 MiB
ranges, sometimes seek, and often stop early; a share of requests are prefetches of popular objects' first
slices. Requests become 1 MiB slices, as the node caches them.

Each slice request goes to the memory tier, then the disk tier, then "origin", as the node does: a disk hit
is offered to memory, a fill goes to both. The tiers are driven by edgecache.storage.policy (the classes the
tiers run), at the same byte budgets for each policy pair:
  the node: memory S3-FIFO + disk DiskPolicy (S3-FIFO over the disk's own index, a 5% small FIFO)
  vs memory LRU + disk LRU, memory S3-FIFO + disk S3-FIFO (10% small), and the node's disk before its own
  index: diskcache's FIFO by store time.
It prints request and byte hit ratios per tier and overall; exit 1 if the memory tier's S3-FIFO does not beat
LRU by 5 points of byte hit ratio, or the node's pair does not beat both LRU + LRU and the FIFO disk, at every
budget point. With --warm N every pair first replays N other sessions of the same objects, uncounted: the tiers
start full, as on a node that has run a while (empty, a 32 GiB disk behind 4 GiB evicts nothing in the first 22% of the
trace, so every disk policy holds the same slices until then). loadtest/disk_bounds.py replays the same disk
stream through policies that know more than the node's, up to Belady's: what bounds the disk tier's gain.
"""

from __future__ import annotations

import argparse
import bisect
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edgecache.storage.disk import DiskTier
from edgecache.storage.policy import DiskPolicy, EvictionPolicy, LRUPolicy, S3FIFOPolicy

MiB = 2**20
SLICE = MiB
RANGE = 2 * MiB


class FIFOPolicy(LRUPolicy):
    """The disk tier before its own index: diskcache's least-recently-stored eviction (a hit refreshes nothing)."""

    def touch(self, key: str) -> None:
        return None


@dataclass
class Tally:
    requests: int = 0
    bytes: int = 0
    hits: int = 0
    hit_bytes: int = 0

    def ratio(self) -> tuple[float, float]:
        return self.hits / max(1, self.requests), self.hit_bytes / max(1, self.bytes)


@dataclass
class Tiers:
    memory: EvictionPolicy
    disk: EvictionPolicy
    mem: Tally = field(default_factory=Tally)  # of all slice requests
    dsk: Tally = field(default_factory=Tally)  # of the requests memory missed
    all: Tally = field(default_factory=Tally)

    def get(self, key: str, size: int) -> None:
        for t in (self.mem, self.all):
            t.requests += 1
            t.bytes += size
        if key in self.memory:
            self.memory.touch(key)
            self._hit(self.mem, size)
            self._hit(self.all, size)
            return
        self.dsk.requests += 1
        self.dsk.bytes += size
        if key in self.disk:
            self.disk.touch(key)
            self._hit(self.dsk, size)
            self._hit(self.all, size)
            self.memory.admit(key, size)  # a disk hit is offered to memory
            return
        self.memory.admit(key, size)  # a fill is offered to both tiers
        self.disk.admit(key, size)

    @staticmethod
    def _hit(t: Tally, size: int) -> None:
        t.hits += 1
        t.hit_bytes += size


def object_sizes(rnd: random.Random, n: int) -> list[int]:
    sizes = []
    for _ in range(n):
        r = rnd.random()
        if r < 0.6:
            mib = rnd.uniform(1, 8)  # short clips
        elif r < 0.95:
            mib = rnd.uniform(20, 120)  # episodes
        else:
            mib = rnd.uniform(300, 1200)  # films
        sizes.append(int(mib * MiB) + rnd.randrange(SLICE))
    return sizes


def zipf_cdf(n: int, alpha: float) -> list[float]:
    weights = [1 / (i + 1) ** alpha for i in range(n)]
    total, acc, cdf = sum(weights), 0.0, []
    for w in weights:
        acc += w / total
        cdf.append(acc)
    return cdf


def workload(seed: int, objects: int, sessions: int) -> Iterator[tuple[str, int]]:
    """(slice key, slice size) for every slice each request covers, in order."""
    rnd = random.Random(seed)
    sizes = object_sizes(rnd, objects)
    for session in plays(rnd, sizes, sessions):
        for obj, pos, length in session:
            yield from _slices(obj, sizes[obj], pos, length)


def warmup(seed: int, objects: int, sessions: int) -> Iterator[tuple[str, int]]:
    """Other sessions over workload(seed, ...)'s objects (drawn from another stream): what came before it."""
    sizes = object_sizes(random.Random(seed), objects)  # workload draws its objects first, from the seed alone
    for session in plays(random.Random(f"warm-up {seed}"), sizes, sessions):
        for obj, pos, length in session:
            yield from _slices(obj, sizes[obj], pos, length)


def plays(rnd: random.Random, sizes: list[int], sessions: int) -> Iterator[list[tuple[int, int, int]]]:
    """Each session's requests in order, as (object, first byte, length); a length may run past the object's end.

    Objects are ranked by popularity (Zipf 0.9 over their index). loadtest/versus_nginx.py replays these over HTTP.
    """
    objects = len(sizes)
    cdf = zipf_cdf(objects, 0.9)
    for _ in range(sessions):
        if rnd.random() < 0.05:  # prefetch: the first slices of a popular object
            obj = bisect.bisect_left(cdf, rnd.random() * 0.5)
            yield [(obj, 0, 4 * SLICE)]
            continue
        obj = min(objects - 1, bisect.bisect_left(cdf, rnd.random()))
        size = sizes[obj]
        pos = 0 if rnd.random() < 0.8 else rnd.randrange(size)
        session: list[tuple[int, int, int]] = []
        while pos < size:
            session.append((obj, pos, RANGE))
            pos += RANGE
            r = rnd.random()
            if r < 0.04:  # seek
                pos = rnd.randrange(size)
            elif r < 0.12:  # stop watching
                break
        yield session


def _slices(obj: int, size: int, pos: int, length: int) -> Iterator[tuple[str, int]]:
    first, last = pos // SLICE, min(size - 1, pos + length - 1) // SLICE
    for index in range(first, last + 1):
        yield f"{obj}:{index}", min(SLICE, size - index * SLICE)


def replay(seed: int, objects: int, sessions: int, memory: int, disk: int, warm: int = 0) -> dict[str, Tiers]:
    """Each pair through the workload; with `warm`, through that many warm-up sessions first, not counted."""
    runs = {
        "node": Tiers(S3FIFOPolicy(memory), DiskPolicy(disk)),
        "s3fifo": Tiers(S3FIFOPolicy(memory), S3FIFOPolicy(disk)),
        "lru": Tiers(LRUPolicy(memory), LRUPolicy(disk)),
        "s3fifo+fifo-disk": Tiers(S3FIFOPolicy(memory), FIFOPolicy(disk)),
    }
    for key, size in warmup(seed, objects, warm):
        for tiers in runs.values():
            tiers.get(key, size)
    for tiers in runs.values():
        tiers.mem, tiers.dsk, tiers.all = Tally(), Tally(), Tally()
    for key, size in workload(seed, objects, sessions):
        for tiers in runs.values():
            tiers.get(key, size)
    return runs


def startup(slices: int) -> float:
    """Seconds to open a disk tier whose index holds `slices` 1 MiB slices (rows written directly into diskcache's
    table and the index, no files: opening reads neither). The counts agree, so the rows are not compared."""
    with tempfile.TemporaryDirectory() as directory:
        DiskTier(Path(directory), slices * SLICE, threads=1).close()
        with sqlite3.connect(Path(directory) / "cache.db") as con:
            keys = [f"s:{n:032x}:0000000000000000:{n % 64}" for n in range(slices)]
            con.executemany(
                "INSERT INTO Cache (key, raw, store_time, size, mode, filename) VALUES (?, 1, ?, ?, 2, ?)",
                ((k, float(n), SLICE, f"{n:08x}.val") for n, k in enumerate(keys)),
            )
            con.executemany(
                "INSERT INTO edge_index VALUES (?, ?, ?, ?, 0)", ((k, n % 2, n, SLICE) for n, k in enumerate(keys))
            )
            con.execute("UPDATE edge_index_totals SET n = ? WHERE queue = 3", (slices,))
        start = time.perf_counter()
        DiskTier(Path(directory), slices * SLICE, threads=1).close()
        return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--objects", type=int, default=3000)
    ap.add_argument("--sessions", type=int, default=40000)
    ap.add_argument(
        "--warm", type=int, default=0, metavar="SESSIONS", help="replay SESSIONS other sessions first, not counted"
    )
    ap.add_argument("--startup", type=int, metavar="SLICES", help="time opening a disk tier of SLICES slices")
    args = ap.parse_args()
    if args.startup:
        print(f"disk tier opened with {args.startup:,} slices in its index in {startup(args.startup):.2f} s")
        return 0
    print(f"seed {args.seed}, {args.objects} objects, {args.sessions} sessions, 1 MiB slices, {args.warm} warm-up")
    print(
        "| memory | disk | policy | memory req/byte hit | disk req/byte hit (of memory misses) | overall req/byte hit |"
    )
    print("|---|---|---|---|---|---|")
    ok = True
    for memory_gib, disk_gib in ((1, 8), (2, 16), (4, 32)):
        runs = replay(args.seed, args.objects, args.sessions, memory_gib * 2**30, disk_gib * 2**30, args.warm)
        for name, t in runs.items():
            (mr, mb), (dr, db), (ar, ab) = t.mem.ratio(), t.dsk.ratio(), t.all.ratio()
            print(
                f"| {memory_gib} GiB | {disk_gib} GiB | {name} | {mr:.1%} / {mb:.1%} | {dr:.1%} / {db:.1%} "
                f"| {ar:.1%} / {ab:.1%} |"
            )
        memory_gain = runs["s3fifo"].mem.ratio()[1] - runs["lru"].mem.ratio()[1]
        node, lru, fifo = (runs[name].all.ratio()[1] for name in ("node", "lru", "s3fifo+fifo-disk"))
        gains = f"{memory_gain * 100:+.1f} points | | {(node - lru) * 100:+.1f} points"
        print(f"| | | node - LRU + LRU, byte hit ratio | {gains} |")
        print(f"| | | node - FIFO disk, byte hit ratio | | | {(node - fifo) * 100:+.1f} points |")
        ok = ok and memory_gain >= 0.05 and node > lru and node > fifo
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
