"""The disk tier's eviction index: S3-FIFO's queues (storage.policy) kept in SQLite, in diskcache's own database.

diskcache stores the values and evicts nothing (eviction_policy "none"); this index decides. Its tables live in
the same database file as diskcache's, and every change runs on diskcache's connection inside its transaction
(`Cache.transact`, BEGIN IMMEDIATE), so an admission, the evictions it decides and the deletes of their values
commit together: the worker processes sharing the disk see one index, never both evict, and the budget holds at
every commit. A hit writes nothing: DiskTier counts hits in memory and hands them here in batches.

Per-queue counts and bytes are kept by triggers, so the policy's `used_bytes` is one indexed read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable

from edgecache.storage.epoch import key_hash
from edgecache.storage.policy import GHOST, MAIN, MAX_FREQ, SMALL

SEQ = 3  # the row of edge_index_totals whose n is the last sequence number given
PINNED = 4  # not a queue of the policy: values it never evicts (DiskTier.put(pinned=True))
RECORDS = 5  # nor this: primary records that hide older copies, the oldest dropped past a bound (storage.diskrecords)
BUCKETS = 65_536  # the buckets of records whose drops are counted (edge_buckets)
DROP_AT_ONCE = 1_000  # records dropped by one write at most: a lowered bound is reached over several

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS edge_index (key TEXT PRIMARY KEY, queue INTEGER NOT NULL, seq INTEGER NOT NULL,"
    " size INTEGER NOT NULL, freq INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS edge_index_order ON edge_index (queue, seq)",
    "CREATE TABLE IF NOT EXISTS edge_index_totals (queue INTEGER PRIMARY KEY, n INTEGER NOT NULL,"
    " bytes INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO edge_index_totals VALUES (0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0), (4, 0, 0), (5, 0, 0)",
    # How many records of each bucket were dropped (bound_records): only ever grows. No row: none.
    "CREATE TABLE IF NOT EXISTS edge_buckets (bucket INTEGER PRIMARY KEY, dropped INTEGER NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS edge_index_in AFTER INSERT ON edge_index BEGIN"
    " UPDATE edge_index_totals SET n = n + 1, bytes = bytes + new.size WHERE queue = new.queue; END",
    "CREATE TRIGGER IF NOT EXISTS edge_index_out AFTER DELETE ON edge_index BEGIN"
    " UPDATE edge_index_totals SET n = n - 1, bytes = bytes - old.size WHERE queue = old.queue; END",
)


class SQLiteQueues:
    """policy.Queues over the edge_index table. Call it only inside a transaction on the connection `con()` gives
    (each disk thread has its own)."""

    def __init__(self, con: Callable[[], sqlite3.Connection]) -> None:
        self._con = con

    def create(self) -> None:
        con = self._con()
        for statement in _SCHEMA:
            con.execute(statement)
        # The records a version before this one pinned (Store names them "v:..."), bounded from now on, in the order
        # they were written. Once done, a look at the few pinned values left (admin jobs).
        moved = con.execute(
            "DELETE FROM edge_index WHERE queue = ? AND key GLOB 'v:*' RETURNING key, seq, size", (PINNED,)
        ).fetchall()
        con.executemany("INSERT INTO edge_index VALUES (?, ?, ?, ?, 0)", [(k, RECORDS, q, n) for k, q, n in moved])

    def find(self, key: str) -> tuple[int, int, int] | None:
        row = self._con().execute("SELECT queue, size, freq FROM edge_index WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def push(self, queue: int, key: str, size: int, freq: int) -> None:
        con = self._con()
        (seq,) = con.execute("UPDATE edge_index_totals SET n = n + 1 WHERE queue = ? RETURNING n", (SEQ,)).fetchone()
        con.execute("INSERT INTO edge_index VALUES (?, ?, ?, ?, ?)", (key, queue, seq, size, freq))

    def oldest(self, queue: int) -> tuple[str, int, int] | None:
        con = self._con()
        row = con.execute(
            "SELECT key, size, freq FROM edge_index WHERE queue = ? ORDER BY seq LIMIT 1", (queue,)
        ).fetchone()
        if row is None:
            return None
        con.execute("DELETE FROM edge_index WHERE key = ?", (row[0],))
        return row[0], row[1], row[2]

    def drop(self, key: str) -> None:
        self._con().execute("DELETE FROM edge_index WHERE key = ?", (key,))

    def pin(self, key: str, size: int, queue: int = PINNED) -> None:
        """Hold `key` outside the policy's queues: never evicted, until deleted or stored again unpinned (RECORDS:
        or dropped by bound_records), the newest of `queue`."""
        self.drop(key)
        self.push(queue, key, size, 0)

    def bound_records(self, most: int) -> list[str]:
        """Past `most` records, drop the oldest (DROP_AT_ONCE at most), each counted as a drop of its bucket in the
        same transaction: their keys, whose values the caller deletes in it too."""
        over = min(self.count(RECORDS) - most, DROP_AT_ONCE)
        if over <= 0:
            return []
        con = self._con()
        rows = con.execute(
            "DELETE FROM edge_index WHERE key IN (SELECT key FROM edge_index WHERE queue = ? ORDER BY seq LIMIT ?)"
            " RETURNING key",
            (RECORDS, over),
        ).fetchall()
        dropped = [key for (key,) in rows]
        self._count_drops(dropped)
        return dropped

    def lose_record(self, key: str) -> bool:
        """Count `key`, a record bound_records keeps (RECORDS) whose value goes otherwise (it failed its checksum),
        as a drop of its bucket as bound_records counts one, in the transaction that deletes it: whether it was."""
        found = self.find(key)
        if found is None or found[0] != RECORDS:
            return False
        self._count_drops([key])
        return True

    def _count_drops(self, keys: list[str]) -> None:
        self._con().executemany(
            "INSERT INTO edge_buckets VALUES (?, 1) ON CONFLICT (bucket) DO UPDATE SET dropped = dropped + 1",
            [(bucket_of(key),) for key in keys],
        )

    def dropped(self, key: str) -> int:
        """How many records of `key`'s bucket were dropped (bound_records)."""
        row = self._con().execute("SELECT dropped FROM edge_buckets WHERE bucket = ?", (bucket_of(key),)).fetchone()
        return 0 if row is None else int(row[0])

    def bump(self, key: str) -> None:
        self.bump_by(key, 1)

    def bump_by(self, key: str, uses: int) -> None:
        """`uses` hits at once, as many bump() calls would: the counter is capped the same way."""
        self._con().execute(
            "UPDATE edge_index SET freq = min(freq + ?, ?) WHERE key = ? AND queue != ?", (uses, MAX_FREQ, key, GHOST)
        )

    def count(self, queue: int) -> int:
        return int(self._totals(queue)[0])

    def bytes(self, queue: int) -> int:
        return int(self._totals(queue)[1])

    def _totals(self, queue: int) -> tuple[int, int]:
        row = self._con().execute("SELECT n, bytes FROM edge_index_totals WHERE queue = ?", (queue,)).fetchone()
        return row[0], row[1]

    def agrees(self) -> bool:
        """Whether the index holds a row for as many values as diskcache holds (leases aside): two indexed reads.
        It misses only a value without a row and a row without a value at once, which a later start finds."""
        con = self._con()
        (values,) = con.execute("SELECT value FROM Settings WHERE key = 'count'").fetchone()
        (leases,) = con.execute("SELECT count(*) FROM Cache WHERE expire_time IS NOT NULL").fetchone()
        held = self.count(SMALL) + self.count(MAIN) + self.count(PINNED) + self.count(RECORDS)
        return bool(values - leases == held)

    def record_hits(self, hits: Iterable[tuple[str, int]]) -> None:
        for key, uses in hits:
            self.bump_by(key, uses)

    def unstored(self) -> list[str]:
        """Keys the index holds whose value diskcache does not have (a crash between the two, an old version)."""
        rows = self._con().execute(
            "SELECT key FROM edge_index WHERE queue != ? AND NOT EXISTS"
            " (SELECT 1 FROM Cache WHERE Cache.key = edge_index.key AND Cache.raw = 1)",
            (GHOST,),
        )
        return [r[0] for r in rows]

    def filename_of(self, key: str) -> str | None:
        """The file diskcache's row of `key` names; None: no row, or a value kept in the row itself."""
        row = self._con().execute("SELECT filename FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchone()
        return None if row is None else row[0]

    def unindexed(self) -> list[tuple[str, int]]:
        """Values diskcache has that the index lacks, oldest stored first: (key, size). Leases (values that
        expire) are not the policy's."""
        rows = self._con().execute(
            "SELECT key, size FROM Cache WHERE raw = 1 AND expire_time IS NULL AND NOT EXISTS"
            " (SELECT 1 FROM edge_index WHERE edge_index.key = Cache.key AND edge_index.queue != ?)"
            " ORDER BY store_time, rowid",
            (GHOST,),
        )
        return [(r[0], r[1]) for r in rows]


def bucket_of(key: str) -> int:
    """The bucket of a record's key: the same in every worker and at every start."""
    return key_hash(key) % BUCKETS
