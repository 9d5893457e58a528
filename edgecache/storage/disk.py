"""The disk tier: diskcache (SQLite index + one file per large value), shared by every worker process.

Every diskcache call blocks (SQLite, file I/O), so each one runs in a small dedicated thread pool and never on
the event loop. Eviction is least-recently-stored: a `get` then needs no write transaction, which keeps disk
hits cheap; recency is the memory tier's job.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import diskcache

from edgecache.errors import StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")


class DiskTier:
    def __init__(self, directory: Path, budget_bytes: int, threads: int = 8) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.budget_bytes = budget_bytes
        self._cache = diskcache.Cache(
            str(directory),
            timeout=10,
            size_limit=budget_bytes,
            eviction_policy="least-recently-stored",
            cull_limit=16,
            statistics=False,
            disk_min_file_size=32 * 1024,
        )
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="disk")
        self.errors = 0

    async def _run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            self.errors += 1
            raise StorageError(f"disk tier: {exc}") from exc

    async def get(self, key: str) -> bytes | None:
        value = await self._run(lambda: self._cache.get(key, None, retry=True))
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes) -> bool:
        return await self._run(lambda: bool(self._cache.set(key, value, retry=True)))

    async def delete(self, key: str) -> None:
        await self._run(lambda: self._cache.delete(key, retry=True))

    async def contains(self, keys: list[str]) -> list[bool]:
        return await self._run(lambda: [k in self._cache for k in keys])

    async def volume(self) -> int:
        return await self._run(self._cache.volume)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._cache.close()
