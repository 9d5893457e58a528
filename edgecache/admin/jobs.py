"""Prefetch jobs: fill lists of URLs into the cache before viewers ask, within a window and a bandwidth cap.

Each URL is requested through this node's own client listener, so it takes the normal path: routed to its
owner in the cluster (which alone fetches and stores it), obeying Cache-Control (a no-store answer is
reported, not kept). HLS playlists expand into their renditions and segments. Jobs are stored in the disk
tier as they progress and resume after a restart.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import secrets
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from edgecache import metrics
from edgecache.core.manifest import parse_dash, parse_hls
from edgecache.errors import StorageError
from edgecache.storage.disk import DiskTier

log = logging.getLogger(__name__)


@dataclass
class Job:
    id: str
    owner: str  # the token name that created it
    urls: list[str]
    priority: int = 0
    window: tuple[str, str] | None = None  # ("02:00", "06:00") local time
    bandwidth: int | None = None  # bytes per second
    concurrency: int = 4
    renditions: list[str] = field(default_factory=list)  # DASH Representation ids to keep (empty: all)
    state: str = "queued"  # queued | waiting-window | running | done | cancelled
    done: int = 0  # URLs finished, whatever the outcome
    fetched: int = 0
    already_cached: int = 0
    not_stored: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None

    def view(self) -> dict[str, Any]:
        d = asdict(self)
        del d["urls"]
        d["total"] = len(self.urls)
        d["queued"] = len(self.urls) - self.done
        elapsed = (time.time() - self.started) if self.started else 0.0
        rate = self.done / elapsed if elapsed > 0 and self.done else 0.0
        d["eta_seconds"] = round((len(self.urls) - self.done) / rate, 1) if rate and self.state == "running" else None
        return d


def in_window(window: tuple[str, str] | None, now: datetime.datetime) -> bool:
    if window is None:
        return True
    start, end = (datetime.time.fromisoformat(w) for w in window)
    t = now.time()
    return start <= t < end if start <= end else (t >= start or t < end)  # a window may span midnight


def _is_manifest(url: str) -> bool:
    return urlsplit(url).path.endswith((".m3u8", ".mpd"))


class TokenBucket:
    """Bytes per second, with a burst of one second's worth."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.stamp = time.monotonic()

    async def take(self, n: int) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= n or self.tokens >= self.rate:
                self.tokens -= n
                return
            await asyncio.sleep((min(n, self.rate) - self.tokens) / self.rate)


class JobRunner:
    def __init__(self, disk: DiskTier, edge_url: str) -> None:
        self.disk = disk
        self.edge_url = edge_url  # this node's client listener
        self.jobs: dict[str, Job] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        try:
            index = await self.disk.get("jobs-index")
        except StorageError:
            index = None
        for job_id in json.loads(index) if index else []:
            raw = await self.disk.get(f"job:{job_id}")
            if raw is None:
                continue
            fields = json.loads(raw)
            fields["window"] = tuple(fields["window"]) if fields.get("window") else None
            job = Job(**fields)
            self.jobs[job.id] = job
            if job.state not in ("done", "cancelled"):
                log.info("resuming prefetch job %s at %d of %d", job.id, job.done, len(job.urls))
                self._run(job)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def submit(self, job: Job) -> Job:
        job.id = job.id or secrets.token_hex(8)
        self.jobs[job.id] = job
        self._publish()
        await self._save(job)
        await self.disk.put("jobs-index", json.dumps(list(self.jobs)).encode())
        self._run(job)
        return job

    def _run(self, job: Job) -> None:
        self._tasks[job.id] = asyncio.ensure_future(self._work(job))

    async def _save(self, job: Job) -> None:
        try:
            await self.disk.put(f"job:{job.id}", json.dumps(asdict(job)).encode())
        except StorageError as exc:
            log.warning("prefetch job %s not saved: %s", job.id, exc)

    async def _work(self, job: Job) -> None:
        while not in_window(job.window, datetime.datetime.now()):
            job.state = "waiting-window"
            await asyncio.sleep(30)
        job.state, job.started = "running", job.started or time.time()
        self._publish()
        bucket = TokenBucket(job.bandwidth) if job.bandwidth else None
        queue: asyncio.Queue[str] = asyncio.Queue()
        for url in job.urls[job.done :]:
            queue.put_nowait(url)
        workers = [asyncio.ensure_future(self._worker(job, queue, bucket)) for _ in range(job.concurrency)]
        await queue.join()
        for w in workers:
            w.cancel()
        job.state, job.finished = "done", time.time()
        self._publish()
        await self._save(job)
        log.info("prefetch job %s done: %s", job.id, json.dumps(job.view()))

    async def _worker(self, job: Job, queue: asyncio.Queue[str], bucket: TokenBucket | None) -> None:
        while True:
            url = await queue.get()
            try:
                outcome, body = await self._fetch(url, bucket, job)
                if outcome in ("fetched", "cached") and body is not None and _is_manifest(url):
                    for extra in self._expand(url, body, job):
                        queue.put_nowait(extra)
                self._count(job, outcome)
            finally:
                job.done += 1
                if job.done % 50 == 0:
                    await self._save(job)
                queue.task_done()

    def _expand(self, url: str, body: bytes, job: Job) -> list[str]:
        text = body.decode("utf-8", "replace")
        if urlsplit(url).path.endswith(".mpd"):
            found = list(parse_dash(text, url, frozenset(job.renditions)) or ())
        else:
            playlist = parse_hls(text, url)
            found = [*playlist.variants, *playlist.segments] if playlist is not None else []
        host = urlsplit(url).netloc
        extra = [u for u in found if urlsplit(u).netloc == host]  # never follow a manifest to another host
        new = [u for u in extra if u not in job.urls]
        job.urls.extend(new)
        return new

    def _publish(self) -> None:
        states = Counter(j.state for j in self.jobs.values())
        for state in ("queued", "waiting-window", "running", "done", "cancelled"):
            metrics.PREFETCH_JOBS.labels(state).set(states.get(state, 0))

    @staticmethod
    def _count(job: Job, outcome: str) -> None:
        metrics.PREFETCH_URLS.labels(outcome if not outcome.startswith(("status", "error")) else "failed").inc()
        if outcome == "fetched":
            job.fetched += 1
        elif outcome == "cached":
            job.already_cached += 1
        elif outcome == "not-stored":
            job.not_stored += 1
        else:
            job.failed = dict(Counter(job.failed) + Counter({outcome: 1}))

    async def _fetch(self, url: str, bucket: TokenBucket | None, job: Job) -> tuple[str, bytes | None]:
        assert self._session is not None
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        keep = _is_manifest(url)
        try:
            async with self._session.get(
                self.edge_url + target, headers={"Host": parts.netloc}, timeout=aiohttp.ClientTimeout(total=600)
            ) as r:
                chunks = []
                async for chunk in r.content.iter_chunked(256 * 1024):
                    job.bytes += len(chunk)
                    metrics.PREFETCH_BYTES.inc(len(chunk))
                    if keep:
                        chunks.append(chunk)
                    if bucket is not None:
                        await bucket.take(len(chunk))
                # The first member is the cache that answered: the owner, when this node forwarded it.
                params = [p.strip() for p in r.headers.get("Cache-Status", "").split(",")[0].split(";")[1:]]
                if r.status >= 400:
                    return f"status {r.status}", None
                if "hit" in params:
                    return "cached", b"".join(chunks)
                return ("fetched" if "stored" in params else "not-stored"), b"".join(chunks)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"error {exc.__class__.__name__}", None
