"""Prefetch jobs: fill lists of URLs into the cache before viewers ask, within a window and a bandwidth cap.

Each URL is requested through this node's own client listener, so it takes the normal path: routed to its
owner in the cluster (which alone fetches and stores it), obeying Cache-Control (a no-store answer is
reported, not kept). A redirect is never followed: its Location is the origin's word, and following it would
let an origin point this node at any address (SSRF); it is counted as failed ("status 302"). HLS and DASH
manifests expand into their renditions and segments, parsed on a thread of their own (an 8 x 3,000-segment
ladder is 0.1-0.3 s of parsing that would otherwise delay every hit of this worker), and a job
never holds more than max_urls URLs, expansions included: the rest are counted in `dropped`, not fetched.

Jobs are stored in the disk tier as they progress and resume after a restart. They are bounded: at most
max_jobs are kept (a new one past that is refused), a finished one is forgotten `keep` seconds after it ended,
and DELETE cancels and forgets one at once.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import secrets
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from edgecache import metrics
from edgecache.core.manifest import expand
from edgecache.errors import StorageError
from edgecache.storage.disk import DiskTier

log = logging.getLogger(__name__)

MAX_URLS = 100_000  # per job, URLs found in manifests included
KEEP = 24 * 3600.0  # seconds a finished job stays listed (config: admin.job_retention)
MAX_JOBS = 1_000  # jobs kept, in any state (config: admin.max_jobs)
FINISHED = ("done", "cancelled")


class JobsFull(Exception):
    """No room for another job; the message is the reason for the 429."""


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
    dropped: int = 0  # URLs found in manifests past max_urls: not fetched
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
    def __init__(
        self,
        disk: DiskTier,
        edge_url: str,
        keep: float = KEEP,
        max_jobs: int = MAX_JOBS,
        max_urls: int = MAX_URLS,
        unix: str | None = None,
    ) -> None:
        self.disk = disk
        self.edge_url = edge_url  # this node's client listener
        self.unix = unix  # or its internal socket (see server._start_admin): the site's client ACL is not ours
        self.keep = keep
        self.max_jobs = max_jobs
        self.max_urls = max_urls
        self.jobs: dict[str, Job] = {}
        self._seen: dict[str, set[str]] = {}  # by job: its URLs, for expansions to look up in O(1)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._parser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifest")
        self._index = asyncio.Lock()
        self._pruner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        connector = aiohttp.UnixConnector(self.unix) if self.unix else None
        self._session = aiohttp.ClientSession(auto_decompress=False, connector=connector)
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
        await self.prune(time.time())
        for job in self.jobs.values():
            if job.state not in FINISHED:
                log.info("resuming prefetch job %s at %d of %d", job.id, job.done, len(job.urls))
                self._run(job)
        self._pruner = asyncio.ensure_future(self._prune_every(max(1.0, min(self.keep, 60.0))))

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *([self._pruner] if self._pruner else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        self._parser.shutdown(wait=False, cancel_futures=True)

    async def submit(self, job: Job) -> Job:
        await self.prune(time.time())
        if len(self.jobs) >= self.max_jobs:
            raise JobsFull(
                f"{len(self.jobs)} prefetch jobs are kept (at most {self.max_jobs}): delete finished ones "
                f"(DELETE /prefetch/{{id}}) or wait until they expire, {self.keep:.0f} s after they end"
            )
        job.id = job.id or secrets.token_hex(8)
        self.jobs[job.id] = job
        self._publish()
        await self._save(job)
        await self._write_index()
        self._run(job)
        return job

    async def delete(self, job_id: str) -> None:
        """Cancel the job if it runs, then forget it, in memory and on disk."""
        task = self._tasks.pop(job_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._forget([job_id])

    async def prune(self, now: float) -> None:
        """Forget the jobs that finished more than `keep` seconds ago."""
        old = [j.id for j in self.jobs.values() if j.state in FINISHED and (j.finished or j.created) + self.keep <= now]
        if old:
            await self._forget(old)

    async def _prune_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self.prune(time.time())

    async def _forget(self, ids: list[str]) -> None:
        for job_id in ids:
            self.jobs.pop(job_id, None)
            self._seen.pop(job_id, None)
            self._tasks.pop(job_id, None)
        self._publish()
        await self._write_index()  # first: a record the index does not name is never loaded
        for job_id in ids:
            try:
                await self.disk.delete(f"job:{job_id}")
            except StorageError as exc:
                log.warning("prefetch job %s not deleted from disk: %s", job_id, exc)

    async def _write_index(self) -> None:
        async with self._index:  # in order: an older list never lands after a newer one
            try:
                await self.disk.put("jobs-index", json.dumps(list(self.jobs)).encode())
            except StorageError as exc:
                log.warning("prefetch job index not saved: %s", exc)

    def _run(self, job: Job) -> None:
        self._tasks[job.id] = asyncio.ensure_future(self._work(job))

    async def _save(self, job: Job) -> None:
        if job.id not in self.jobs:
            return  # deleted meanwhile: never written back
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
        queue: asyncio.Queue[str] = asyncio.Queue()  # bounded by max_urls: only admitted URLs are queued
        for url in job.urls[job.done :]:
            queue.put_nowait(url)
        workers = [asyncio.ensure_future(self._worker(job, queue, bucket)) for _ in range(job.concurrency)]
        try:
            await queue.join()
        finally:  # cancelled (DELETE, shutdown) or done: its workers stop with it
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        job.state, job.finished = "done", time.time()
        self._seen.pop(job.id, None)  # a done job expands nothing more: its URLs are in job.urls
        self._publish()
        await self._save(job)
        log.info("prefetch job %s done: %s", job.id, json.dumps(job.view()))

    async def _worker(self, job: Job, queue: asyncio.Queue[str], bucket: TokenBucket | None) -> None:
        while True:
            url = await queue.get()
            try:
                outcome, body = await self._fetch(url, bucket, job)
                if outcome in ("fetched", "cached") and body is not None and _is_manifest(url):
                    for extra in await self._expand(url, body, job):
                        queue.put_nowait(extra)
                self._count(job, outcome)
            finally:
                job.done += 1
                if job.done % 50 == 0:
                    await self._save(job)
                queue.task_done()

    async def _expand(self, url: str, body: bytes, job: Job) -> list[str]:
        """The new URLs a manifest names, parsed off the loop, admitted in O(1) each."""
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(self._parser, expand, url, body, frozenset(job.renditions))
        return self._admit(job, found)

    def _admit(self, job: Job, found: tuple[str, ...]) -> list[str]:
        """Those of `found` the job does not have yet, while it has room (max_urls); the rest are `dropped`."""
        seen = self._seen.get(job.id)
        if seen is None:
            seen = self._seen[job.id] = set(job.urls)
        room = self.max_urls - len(job.urls)
        new: list[str] = []
        for u in found:
            if u in seen:
                continue
            seen.add(u)
            if len(new) < room:
                new.append(u)
            else:
                job.dropped += 1
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
                self.edge_url + target,
                headers={"Host": parts.netloc},
                timeout=aiohttp.ClientTimeout(total=600),
                allow_redirects=False,  # see the module's docstring
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
                if r.status >= 400 or (r.status >= 300 and not {"hit", "stored"} & set(params)):
                    return f"status {r.status}", None  # an error, or a redirect not kept (nor followed)
                if "hit" in params:
                    return "cached", b"".join(chunks)
                return ("fetched" if "stored" in params else "not-stored"), b"".join(chunks)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"error {exc.__class__.__name__}", None
