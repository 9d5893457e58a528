"""A bounded table of remembered decisions that keeps the ones still asked for.

Two generations of at most `size` entries each. A lookup finds an entry in either; one found in the older is
moved to the newer. An entry is added to the newer; once that holds `size`, the older is dropped and the newer
becomes the older. So an entry asked at least once in every `size` additions stays, whatever else comes and goes
(a scan of keys asked once costs only what it adds), and the table never holds more than twice `size`: where a
table cleared when full dropped its most asked entries with the rest, and decided each of them again.

With a `cost` (what an entry holds in memory, in bytes, as a function of its key alone), each generation also
holds at most `budget` bytes: a generation is full when the next entry would take it past that, and an entry that
costs more than a whole generation is not kept. So the table holds at most twice `budget` bytes however large its
entries are (a count alone let fat request heads take ten times the memory thin ones did). A lookup costs the
same either way: only an addition asks what its entry costs.

Several tables may share one budget of bytes (a Pool: all the memos of a worker's fast path, where four memos of
up to twice 16 MiB each let one client's flood of fat heads take a worker to 127 MiB against a budget of 80). Their
generations then also turn together: an addition that would take what was added since they last turned past half
the budget, or all their entries past the whole, makes every newer generation the older one, and the older ones are
dropped. So they hold at most the budget together, and an entry asked at least once while half the budget is added
stays. An entry found in an older generation and moved is no addition, so a set of entries asked in turn that fits
one table's generation and the pool, but not half the pool, is kept from its second round on.

Pure: plain dicts, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

# What remembering the answer to a request head holds, from the head alone (head_cost): measured with tracemalloc
# on the fast path's memo (prepared.Prepared: the head, its parsed fields, the Hit, its FillRequest and CacheKey, the
# encoded answer), and rounded up: 2,918 bytes for a head of 2 fields, 25,517 for one of 122 (1,870 bytes), 6,039
# for one of 3 fields with a 1,500-byte value. The bytes count twice: the head, and the fields decoded from it.
ENTRY_BYTES = 2600
FIELD_BYTES = 160


# What each generation of a memo holds at most in a pool of 32 MiB (config.CacheSettings.memo_bytes' default) or
# less: a set of heads asked in turn (a player's byte-range playlist, W3u's 4,096 ranges) is kept whole while it fits
# one generation, and 4,096 heads of ~500 bytes and 3 fields fit 16 MiB (648 of 122 fields and 1,870 bytes).
GENERATION_ENTRIES = 4096
GENERATION_BYTES = 16 * 2**20
POOL_PER_ENTRY = 8192  # past that, a generation holds an entry for each 8 KiB of its pool: 4,096 at 32 MiB


def generation(pool_bytes: int) -> tuple[int, int]:
    """The entries and bytes each generation of a memo in a pool of `pool_bytes` holds at most: the entries follow
    the pool (a fixed 4,096 stopped a node that forwards a long tail from remembering its forwards past ~6,000
    objects, whatever memory it was given: loadtest.fwdcpu), and so do the bytes (half of the pool, which the pool
    itself bounds: a generation turns when half its budget was added)."""
    return max(GENERATION_ENTRIES, pool_bytes // POOL_PER_ENTRY), max(GENERATION_BYTES, pool_bytes // 2)


def head_cost(head: bytes) -> int:
    """What a memo's entry for this request head holds, in bytes (the request line and the empty line that ends
    the head are two of its line ends; every other one ends a field)."""
    return ENTRY_BYTES + 2 * len(head) + FIELD_BYTES * max(head.count(b"\n") - 2, 0)


def fields_cost(target: str, fields: tuple[tuple[str, str], ...] | tuple[tuple[bytes, bytes], ...]) -> int:
    """head_cost() of the head these fields and target were parsed from, give or take its request line's words."""
    return ENTRY_BYTES + 2 * (len(target) + sum(len(k) + len(v) + 4 for k, v in fields)) + FIELD_BYTES * len(fields)


class Pool:
    """One budget of bytes for the memos that join it, all together (their own bounds still hold)."""

    __slots__ = ("added", "budget", "memos", "new_bytes", "old_bytes")

    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError("a pool holds at least one byte")
        self.budget = budget
        self.memos: list[Memo[Any, Any]] = []
        self.added = 0  # bytes of the entries added since the generations last turned
        # the sums of its memos' new_bytes and old_bytes, kept by each change of theirs (Memo._count): make_room
        # runs on every addition, and summing the memos there cost more than the rest of an addition
        self.new_bytes = 0
        self.old_bytes = 0

    @property
    def bytes(self) -> int:
        """The bytes the entries of all its memos hold."""
        return self.new_bytes + self.old_bytes

    def make_room(self, cost: int) -> None:
        """Before an entry of `cost` is added: when the entries added since the generations last turned would
        hold more than half the budget with it, or all the entries more than the whole, every memo's newer
        generation becomes its older (and when even that is not room, every memo is emptied)."""
        if 2 * (self.added + cost) > self.budget or self.new_bytes + self.old_bytes + cost > self.budget:
            again = self.new_bytes + cost > self.budget
            for memo in self.memos:
                memo.rotate()
                if again:
                    memo.rotate()
            self.added = 0
        self.added += cost


class Memo(Generic[K, V]):
    __slots__ = ("budget", "cost", "new", "new_bytes", "old", "old_bytes", "pool", "size")

    def __init__(
        self, size: int, budget: int = 0, cost: Callable[[K], int] | None = None, pool: Pool | None = None
    ) -> None:
        if size < 1:
            raise ValueError("a memo holds at least one entry")
        if (cost is None) != (budget == 0) or budget < 0 or (pool is not None and cost is None):
            raise ValueError("a memo bound by bytes has both a budget and a cost")
        self.size = size
        # bytes a generation holds at most (0: no bound but the count); never more than its pool's
        self.budget = budget if pool is None else min(budget, pool.budget)
        self.cost = cost
        self.new: dict[K, V] = {}
        self.old: dict[K, V] = {}
        self.new_bytes = 0
        self.old_bytes = 0
        self.pool = pool
        if pool is not None:
            pool.memos.append(self)

    @property
    def bytes(self) -> int:
        """The bytes its entries hold, as their cost counts them (0 without one)."""
        return self.new_bytes + self.old_bytes

    def get(self, key: K) -> V | None:
        value = self.new.get(key)
        if value is None and self.old:
            value = self.old.pop(key, None)
            if value is not None:
                self._add(key, value, self._cost(key), True)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        if key in self.new:
            self.new[key] = value
            return
        cost = self._cost(key)
        if self.old.pop(key, None) is not None:
            self._add(key, value, cost, True)
        elif not self.budget or cost <= self.budget:  # one larger than a generation is never kept
            self._add(key, value, cost, False)

    def _add(self, key: K, value: V, cost: int, moved: bool) -> None:
        """Put an entry in the newer generation; `moved`: taken out of the older (no more bytes than before in all).
        Its pool's sums kept here as its own, not through _count: this is every addition's and every move's path."""
        pool = self.pool
        if moved:
            self.old_bytes -= cost
            if pool is not None:
                pool.old_bytes -= cost
        if len(self.new) >= self.size or (self.budget and self.new_bytes + cost > self.budget):
            self.rotate()
        if pool is not None:
            if not moved:
                pool.make_room(cost)
            pool.new_bytes += cost
        self.new[key] = value
        self.new_bytes += cost

    def rotate(self) -> None:
        """The newer generation becomes the older; the older is dropped."""
        self.old, self.new = self.new, {}
        self._count(-self.new_bytes, self.new_bytes - self.old_bytes)

    def _count(self, new: int, old: int) -> None:
        """Its generations' bytes change by `new` and `old`, and so do its pool's sums of them."""
        self.new_bytes += new
        self.old_bytes += old
        pool = self.pool
        if pool is not None:
            pool.new_bytes += new
            pool.old_bytes += old

    def __delitem__(self, key: K) -> None:
        """Forget `key`, wherever it is (a KeyError if nowhere, as a dict's)."""
        if not self._forget(key):
            raise KeyError(key)

    def _forget(self, key: K) -> bool:
        found = False
        if self.new.pop(key, None) is not None:
            self._count(-self._cost(key), 0)
            found = True
        if self.old.pop(key, None) is not None:
            self._count(0, -self._cost(key))
            found = True
        return found

    def _cost(self, key: K) -> int:
        return 0 if self.cost is None else self.cost(key)

    def __len__(self) -> int:
        return len(self.new) + len(self.old)

    def clear(self) -> None:
        self.new.clear()
        self.old.clear()
        self._count(-self.new_bytes, -self.old_bytes)


class Seen:
    """Whether a key was seen lately: the doorkeeper in front of a memo (as TinyLFU's, or nginx's
    proxy_cache_min_uses 2), so that keys asked once, as a player's byte ranges nearly all are, cost a number held
    for a while rather than an entry in the memo, made, counted, and freed at a turn of its generations.

    The keys' hashes in two generations of at most `size` (sets, not a Memo: its lookup and addition took 1.4
    µs a new key, these 0.26): a key seen again within `size` other keys is known, and at most 2 x `size` hashes are
    held, whatever the keys are. A key with another key's hash passes for seen (and is remembered at once):
    remembering is never wrong, only dearer. Python's hash() is salted per process, which is all this needs: no
    other process reads it.
    """

    __slots__ = ("_new", "_old", "_size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("at least one key in a generation")
        self._size = size
        self._new: set[int] = set()
        self._old: set[int] = set()

    def again(self, key: Hashable) -> bool:
        """Whether `key` was seen lately; it is noted as seen either way (one found in the older generation is
        added to the newer, where it stays longest)."""
        h = hash(key)
        if h in self._new:
            return True
        seen = h in self._old
        if len(self._new) >= self._size:
            self._old, self._new = self._new, set()
        self._new.add(h)
        return seen

    def __len__(self) -> int:
        """The hashes held (one in both generations counts twice)."""
        return len(self._new) + len(self._old)
