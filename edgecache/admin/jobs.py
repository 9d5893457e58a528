"""Prefetch jobs: fill lists of URLs into the cache before viewers ask, by priority, within a window and a
bandwidth cap.

Each URL is requested through this node's own client listener, so it takes the normal path: routed to its
owner in the cluster (which alone fetches and stores it), obeying Cache-Control (a no-store answer is
reported, not kept). A redirect is never followed: its Location is the origin's word, and following it would
let an origin point this node at any address (SSRF); it is counted as failed ("status 302"). HLS and DASH
manifests expand into their renditions and segments, parsed on a thread of their own (an 8 x 3,000-segment
ladder is 0.1-0.3 s of parsing that would otherwise delay every hit of this worker), and a job
never holds more than max_urls URLs, expansions included, nor a token's jobs together more than max_held bytes of
them (admin.held): the rest are counted in `dropped`, not fetched.

All jobs share `slots` fetches at a time; each token with URLs to start has its share of them first (_dispatch),
and no site's URLs hold more than the site's share of them (`site_most`), whoever's jobs they are.
A freed slot goes to the job of highest priority (then the oldest) in its window and below its concurrency: a
later job of higher priority takes the slots as the URLs in flight of a lower one finish (never cutting one), and
one provider's priority orders its own jobs only. A job whose window closes takes no new URL (those in flight
finish) and resumes when the window opens again.

Jobs are stored in the disk tier as they progress and resume after a restart. They are bounded: each token keeps
at most max_jobs (its new one past that is refused), a finished one is forgotten `keep` seconds after it ended,
DELETE of a queued or running job cancels it (it stays listed, as cancelled) and DELETE of a finished one
forgets it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from edgecache import metrics
from edgecache.admin.bucket import TokenBucket
from edgecache.admin.held import MAX_HELD, Held, cost
from edgecache.admin.reading import reading
from edgecache.admin.records import Records
from edgecache.admin.window import in_window, seconds_to_boundary
from edgecache.core.manifest import MAX_CHARS, MAX_SEGMENTS, expand
from edgecache.core.siteurl import request_target
from edgecache.errors import StorageError
from edgecache.storage.disk import DiskTier

log = logging.getLogger(__name__)

MAX_URLS = 100_000  # per job, URLs found in manifests included
# Bytes of one manifest kept to be expanded: a playlist of 100,000 segments is ~10 MiB. Past it the URL is still
# fetched (and filled) but not expanded, and counted failed: an origin's "manifest" of gigabytes, held whole
# to be parsed, would otherwise take as much of the worker's memory.
MAX_MANIFEST = 32 * 1024 * 1024
KEEP = 24 * 3600.0  # seconds a finished job stays listed (config: admin.job_retention)
MAX_JOBS = 1_000  # jobs kept per token, in any state (config: admin.max_jobs)
SLOTS = 16  # fetches in flight across all jobs (config: admin.prefetch_slots)
REVOKED = "error its token may no longer act on this site"  # a job's URL once a reload took that right away (`may`)
REFUSED = f"error manifest past {MAX_SEGMENTS} URLs or {MAX_CHARS} chars"  # core.manifest refused to expand it
RECHECK = 60.0  # at most this long between looks at the clock: a clock set forward or a DST change is seen
STATES = ("queued", "waiting-window", "running", "done", "cancelled", "failed")
FINISHED = ("done", "cancelled", "failed")


class JobsFull(Exception):
    """No room for another job; the message is the reason for the 429."""


@dataclass
class Job:
    id: str
    owner: str  # the token name that created it
    urls: list[str]
    priority: int = 0  # higher first
    window: tuple[str, str] | None = None  # ("02:00", "06:00") local time
    bandwidth: int | None = None  # bytes per second fetched over the network (origin or peer)
    concurrency: int = 4
    renditions: list[str] = field(default_factory=list)  # DASH Representation ids to keep (empty: all)
    state: str = "queued"  # one of STATES
    done: int = 0  # URLs finished, whatever the outcome
    fetched: int = 0
    already_cached: int = 0
    not_stored: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    bytes: int = 0  # body bytes read, from this node's cache included
    network_bytes: int = 0  # of those, what came over the network: what the bandwidth cap counts
    dropped: int = 0  # URLs found in manifests past max_urls: not fetched
    error: str | None = None  # why a job stopped before its end ("failed")
    resume: int = 0  # index of the first URL not finished: where a restart takes up the job
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None

    def view(self) -> dict[str, Any]:
        # Not asdict: it copies every URL (100,000 of them, 0.2 s on the loop) only for them to be dropped.
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("urls", "resume")}
        d["failed"], d["renditions"] = dict(self.failed), list(self.renditions)
        d["total"], d["queued"] = len(self.urls), len(self.urls) - self.done
        elapsed = (time.time() - self.started) if self.started else 0.0
        rate = self.done / elapsed if elapsed > 0 and self.done else 0.0
        d["eta_seconds"] = round((len(self.urls) - self.done) / rate, 1) if rate and self.state == "running" else None
        return d


def rank(job: Job) -> tuple[int, float, str]:
    """The order in which jobs get free slots: higher priority, then older, then by id (a total order)."""
    return -job.priority, job.created, job.id


def _unread(status: int) -> str:
    """The outcome of an answer not stored: an error, a redirect (not followed: see the module's docstring), or
    an answer not kept."""
    return f"status {status}" if status >= 300 else "not-stored"


def _is_manifest(url: str) -> bool:
    return urlsplit(url).path.endswith((".m3u8", ".mpd"))


@dataclass
class _Run:
    """What an unfinished job holds while this process runs it."""

    pending: deque[int]  # indices into job.urls not taken yet, in order
    flying: dict[int, asyncio.Task[None]] = field(default_factory=dict)  # taken, not finished
    bucket: TokenBucket | None = None


class JobRunner:
    def __init__(
        self,
        disk: DiskTier,
        edge_url: str,
        keep: float = KEEP,
        max_jobs: int = MAX_JOBS,
        max_urls: int = MAX_URLS,
        max_held: int = MAX_HELD,
        unix: str | None = None,
        slots: int = SLOTS,
        now: Callable[[], datetime.datetime] = datetime.datetime.now,
    ) -> None:
        self.disk = disk
        self.edge_url = edge_url  # this node's client listener
        self.unix = unix  # or its internal socket (see server._start_admin): the site's client ACL is not ours
        self.keep = keep
        self.max_jobs = max_jobs
        self.max_urls = max_urls
        self.held = Held(max_held)  # bytes of URLs each token's kept jobs hold
        self.slots = slots
        self.now = now  # local wall time, for windows; tests drive it and call wake()
        self.may: Callable[[str, str], bool] = lambda _owner, _url: True  # may this token's job fetch this URL now
        # The site of a URL, and the most slots one site's URLs may hold (admin.prefetch sets both from the config):
        # an origin that hangs or trickles holds a slot up to the fetch's timeout, and must leave the other sites some.
        self.site_of: Callable[[str], str] = lambda _url: ""
        self.site_most: Callable[[], int] = lambda: self.slots
        self.jobs: dict[str, Job] = {}
        self._runs: dict[str, _Run] = {}
        self._unread: list[str] = []  # jobs in the index whose record is on a disk out of service
        self._seen: dict[str, set[str]] = {}  # by job: its URLs, for expansions to look up in O(1)
        self._session: aiohttp.ClientSession | None = None
        self._parser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifest")
        self._index = asyncio.Lock()
        self._store = Records(disk)  # each job's record and URLs (admin.records)
        self._records = asyncio.Lock()  # job records are written and deleted one at a time (_save, _forget)
        self._tasks: dict[str, asyncio.Future[None]] = {}  # by job: done when it ends (done, failed, cancelled)
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()  # set and replaced at every change: until() waits on it
        self._background: list[asyncio.Task[None]] = []
        self._ending: set[asyncio.Future[None]] = set()  # the last saves of jobs that ended

    async def start(self) -> None:
        connector = aiohttp.UnixConnector(self.unix) if self.unix else None
        self._session = aiohttp.ClientSession(auto_decompress=False, connector=connector)
        try:
            index = await self.disk.get("jobs-index")
        except StorageError:
            index = None
        for job_id in json.loads(index) if index else []:
            try:
                fields = await self._store.load(job_id)
            except StorageError as exc:  # its disk is out of service: the job waits for it, still in the index
                log.warning("prefetch job %s not resumed: %s", job_id, exc)
                self._unread.append(job_id)
                continue
            if fields is None:
                continue
            fields["window"] = tuple(fields["window"]) if fields.get("window") else None
            job = Job(**fields)
            self.jobs[job.id] = job
            self.held.load(job.owner, cost(job.urls))
        await self.prune(time.time())
        for job in self.jobs.values():
            if job.state not in FINISHED:
                log.info("resuming prefetch job %s at %d of %d", job.id, job.resume, len(job.urls))
                job.done = job.resume  # the URLs after it that had finished are fetched (and counted) again
                self._runs[job.id] = self._new_run(job, job.resume)
        self._dispatch()
        self._background = [
            asyncio.ensure_future(self._prune_every(max(1.0, min(self.keep, 60.0)))),
            asyncio.ensure_future(self._clock()),
        ]

    async def close(self) -> None:
        tasks = [*self._background, *(t for run in self._runs.values() for t in run.flying.values())]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._ending, return_exceptions=True)
        for ended in self._tasks.values():
            ended.cancel()  # nothing ended: a resumed runner takes the job up
        if self._session is not None:
            await self._session.close()
        self._parser.shutdown(wait=False, cancel_futures=True)

    def wake(self) -> None:
        """Look at the clock now (windows) rather than at the next boundary or RECHECK."""
        self._wake.set()

    async def until(self, check: Callable[[], bool]) -> None:
        """Wait until `check()` holds; it is tried after every change of a job's state or counts."""
        while not check():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def submit(self, job: Job) -> Job:
        await self.prune(time.time())
        if (kept := sum(j.owner == job.owner for j in self.jobs.values())) >= self.max_jobs:  # a token's own bound
            raise JobsFull(
                f"{kept} prefetch jobs of {job.owner!r} are kept (at most {self.max_jobs} a token): delete finished "
                f"ones (DELETE /prefetch/{{id}}) or wait until they expire, {self.keep:.0f} s after they end"
            )
        if not self.held.take(job.owner, need := cost(job.urls)):
            raise JobsFull(
                f"the URLs of the prefetch jobs of {job.owner!r} hold {self.held.of(job.owner)} bytes and this job's "
                f"{need} more (at most {self.held.most} a token): delete finished ones (DELETE /prefetch/{{id}})"
            )
        job.id = job.id or secrets.token_hex(8)
        self.jobs[job.id] = job
        self._runs[job.id] = self._new_run(job, 0)
        await self._save(job)
        await self._write_index()
        self._dispatch()
        return job

    async def cancel(self, job_id: str, state: str = "cancelled") -> None:
        """Stop a queued or running job: its URLs in flight are cut, what it filled stays, and it stays listed."""
        job, run = self.jobs[job_id], self._runs.get(job_id)
        if run is None:
            return
        flying = list(run.flying.values())
        for task in flying:
            task.cancel()
        await asyncio.gather(*flying, return_exceptions=True)
        await self._end(job, state)

    async def delete(self, job_id: str) -> None:
        """Forget a job, in memory and on disk (cancelling it first if it is not finished)."""
        if job_id in self._runs:
            await self.cancel(job_id)
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

    async def _clock(self) -> None:
        """Re-dispatch when a window opens or closes: at its next boundary, at most RECHECK s apart."""
        while True:
            now = self.now()
            windows = [self.jobs[i].window for i in self._runs]
            wait = min([RECHECK, *(seconds_to_boundary(w, now) for w in windows if w is not None)])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.01))
            self._wake.clear()
            self._dispatch()

    def _new_run(self, job: Job, first: int) -> _Run:
        self._tasks[job.id] = asyncio.get_running_loop().create_future()
        return _Run(deque(range(first, len(job.urls))), bucket=TokenBucket(job.bandwidth) if job.bandwidth else None)

    def _dispatch(self) -> None:
        """Give the free slots to the jobs in rank order, each token first up to its share of them, and set each
        unfinished job's state. A token's share is the slots divided among the tokens with jobs that can run: its
        priorities order its own jobs, and another provider's priority 2**31 leaves it its share all the same."""
        now = self.now()
        ready = [j for j in sorted((self.jobs[i] for i in self._runs), key=rank) if in_window(j.window, now)]
        free = self.slots - sum(len(run.flying) for run in self._runs.values())
        waiting = {j.owner for j in ready if self._runs[j.id].pending}  # tokens with URLs to start
        share = max(1, self.slots // max(1, len(waiting)))
        held, sites, most = Counter[str](), Counter[str](), self.site_most()
        for j in ready:
            held[j.owner] += len(self._runs[j.id].flying)
        for job_id, run in self._runs.items():  # a job waiting for its window holds its URLs in flight too
            sites.update(self.site_of(self.jobs[job_id].urls[i]) for i in run.flying)
        for fair in (True, False):  # each token's share first, then what is left by rank alone
            for job in ready:
                run = self._runs[job.id]
                while free > 0 and run.pending and len(run.flying) < job.concurrency:
                    site = self.site_of(job.urls[run.pending[0]])
                    if (fair and held[job.owner] >= share) or sites[site] >= most:
                        break
                    i = run.pending.popleft()
                    run.flying[i] = asyncio.ensure_future(self._one(job, run, i))
                    free, held[job.owner], sites[site] = free - 1, held[job.owner] + 1, sites[site] + 1
        for job in (self.jobs[i] for i in self._runs):
            if not in_window(job.window, now):
                job.state = "waiting-window"  # its URLs in flight finish; it takes no new one
            elif self._runs[job.id].flying:
                job.state, job.started = "running", job.started or time.time()
            else:
                job.state = "queued"
        self._publish()
        self._notify()

    async def _one(self, job: Job, run: _Run, i: int) -> None:
        url = job.urls[i]
        try:
            outcome, body = (await self._fetch(url, run.bucket, job)) if self.may(job.owner, url) else (REVOKED, None)
            if outcome in ("fetched", "cached") and body is not None and _is_manifest(url):
                new = await self._expand(url, body, job)
                run.pending.extend(range(len(job.urls) - len(new or ()), len(job.urls)))
                outcome = outcome if new is not None else REFUSED
            self._count(job, outcome)
        except asyncio.CancelledError:
            raise  # cancel() or close(): the job's end is theirs to record
        except Exception as exc:  # a fault of ours, not of a URL: the job stops and says why
            log.exception("prefetch job %s failed at %s", job.id, url)
            del run.flying[i]
            job.error = f"{exc.__class__.__name__}: {exc}"
            asyncio.ensure_future(self.cancel(job.id, "failed"))  # noqa: RUF006  (a task cannot await its own end)
            return
        del run.flying[i]
        job.done += 1
        job.resume = min([*run.flying, run.pending[0] if run.pending else len(job.urls)])
        if not run.pending and not run.flying:
            await self._end(job, "failed" if job.failed else "done")
            return
        self._dispatch()
        self._notify()
        if job.done % 50 == 0:
            await self._save(job)

    async def _end(self, job: Job, state: str) -> None:
        self._runs.pop(job.id, None)
        job.state, job.finished = state, time.time()
        self._seen.pop(job.id, None)  # a finished job expands nothing more: its URLs are in job.urls
        ended = self._tasks.get(job.id)
        if ended is not None and not ended.done():
            ended.set_result(None)
        self._dispatch()  # its slots go to the others
        # close() waits for this save, which no cancelling of the task that ended the job cuts: one still under way
        # when the runner closed was lost, and the job, seen as done, came back as running after a restart.
        save = asyncio.ensure_future(self._save(job))
        self._ending.add(save)
        save.add_done_callback(self._ending.discard)
        await asyncio.shield(save)
        log.info("prefetch job %s %s: %s", job.id, state, json.dumps(job.view()))

    async def _forget(self, ids: list[str]) -> None:
        for job_id in ids:
            if (job := self.jobs.pop(job_id, None)) is not None:
                self.held.give(job.owner, cost(job.urls))
            self._seen.pop(job_id, None)
            self._tasks.pop(job_id, None)
        self._publish()
        self._notify()
        await self._write_index()  # first: a record the index does not name is never loaded
        async with self._records:
            for job_id in ids:
                try:
                    await self._store.delete(job_id)
                except StorageError as exc:
                    log.warning("prefetch job %s not deleted from disk: %s", job_id, exc)

    async def _write_index(self) -> None:
        async with self._index:  # in order: an older list never lands after a newer one
            try:
                # Pinned, like each job's record: the disk's policy would evict them as unread (bounded: max_jobs).
                await self.disk.put("jobs-index", json.dumps([*self.jobs, *self._unread]).encode(), pinned=True)
            except StorageError as exc:
                log.warning("prefetch job index not saved: %s", exc)

    async def _save(self, job: Job) -> None:
        # One at a time with _forget's deletes: a write still under way when its job is forgotten would otherwise
        # land after the delete and leave the record on the disk, pinned, named by no index.
        async with self._records:
            if job.id not in self.jobs:
                return  # deleted meanwhile: never written back
            try:
                await self._store.save(job)
            except StorageError as exc:
                log.warning("prefetch job %s not saved: %s", job.id, exc)

    async def _expand(self, url: str, body: bytes, job: Job) -> list[str] | None:
        """The new URLs a manifest names, parsed off the loop, admitted in O(1) each; None: the manifest is refused."""
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(self._parser, expand, url, body, frozenset(job.renditions))
        return self._admit(job, found) if found is not None else None

    def _admit(self, job: Job, found: tuple[str, ...]) -> list[str]:
        """Those of `found` the job does not have yet, while it has room (max_urls, its token's max_held); the rest
        are `dropped`."""
        seen = self._seen.get(job.id)
        if seen is None:
            seen = self._seen[job.id] = set(job.urls)
        room = self.max_urls - len(job.urls)
        new: list[str] = []
        for u in found:
            if u in seen:
                continue
            seen.add(u)
            if len(new) < room and self.held.take(job.owner, cost((u,))):
                new.append(u)
            else:
                job.dropped += 1
        job.urls.extend(new)
        return new

    def _publish(self) -> None:
        states = Counter(j.state for j in self.jobs.values())
        for state in STATES:
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
        """The outcome of asking this node for `url` as a viewer would, and its body when it is a manifest kept. An
        answer not stored is left unread: an object too large to store, a private or no-store one, a pass, is
        fetched from the origin only as far as its head, not to its end for nothing."""
        assert self._session is not None
        parts = urlsplit(url)
        keep = _is_manifest(url)
        try:
            async with self._session.get(
                URL(self.edge_url + request_target(url), encoded=True),  # as written: yarl re-encodes it
                headers={"Host": parts.netloc},
                timeout=aiohttp.ClientTimeout(total=600),
                allow_redirects=False,  # see the module's docstring
            ) as r:
                outcome, source = reading(", ".join(r.headers.getall("Cache-Status", [])))
                if outcome == "not-stored":  # reading on stores nothing: the fill stops once nobody reads it
                    return _unread(r.status), None
                capped = bucket if source != "cache" else None  # bytes read back from this node's cache are free
                chunks, kept = [], 0
                async for chunk in r.content.iter_chunked(256 * 1024):
                    job.bytes += len(chunk)
                    metrics.PREFETCH_BYTES.inc(len(chunk))
                    kept += len(chunk) if keep else 0
                    if keep and kept <= MAX_MANIFEST:  # past it: read on (the fill completes), keep nothing
                        chunks.append(chunk)
                    job.network_bytes += len(chunk) if source != "cache" else 0
                    if capped is not None:
                        await capped.take(len(chunk))
                if r.status >= 400:
                    return f"status {r.status}", None  # an error, kept or not
                if kept > MAX_MANIFEST:
                    return f"error manifest over {MAX_MANIFEST} bytes", None  # not expanded
                return outcome, b"".join(chunks)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"error {exc.__class__.__name__}", None
