"""Prefetch jobs are bounded (retention, a count, DELETE), follow no redirect, and expand manifests off the loop
within max_urls; all through the real admin API of a real edge."""

from __future__ import annotations

import asyncio
import datetime
import gc
import threading
import time
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

import edgecache.admin.jobs
import edgecache.core.manifest
from edgecache.admin.held import cost
from edgecache.admin.jobs import Job, JobRunner, JobsFull
from edgecache.config import Site
from edgecache.storage.disk import DiskTier
from tests.e2e.adminkit import OPERATOR, VIDEOS, AdminNode, admin_node, node_config
from tests.e2e.procs import edge_process, free_port
from tests.origin import Origin


def closed_window() -> dict[str, str]:
    now = datetime.datetime.now()
    return {
        "start": (now + datetime.timedelta(hours=2)).strftime("%H:%M"),
        "end": (now + datetime.timedelta(hours=3)).strftime("%H:%M"),
    }


async def submit(node: AdminNode, body: object) -> tuple[int, dict[str, object]]:
    status, answer = await node.call("POST", "/prefetch", json=body)
    assert isinstance(answer, dict)
    return status, answer


async def test_finished_jobs_are_forgotten_after_the_retention_time(origin: Origin, tmp_path: Path) -> None:
    origin.put("/a", b"a")
    async with admin_node(node_config(origin, tmp_path / "c"), keep=3600.0) as node:
        status, job = await submit(node, ["http://video.test/a"])
        assert status == 202
        job_id = str(job["id"])
        assert (await node.finished(job_id))["state"] == "done"
        disk = node.edge.node.store.disk
        await node.jobs.prune(time.time() + 3500)
        assert (await node.call("GET", f"/prefetch/{job_id}"))[0] == 200
        await node.jobs.prune(time.time() + 3601)
        assert (await node.call("GET", f"/prefetch/{job_id}"))[0] == 404
        assert (await node.call("GET", "/prefetch"))[1] == []
        assert await disk.get(f"job:{job_id}") is None
        assert await disk.get("jobs-index") == b"[]"
        again = JobRunner(disk, node.edge.url)
        await again.start()
        try:
            assert again.jobs == {}
        finally:
            await again.close()
        assert origin.hits["/a"] == 1


async def test_a_job_forgotten_while_its_last_record_is_written_leaves_no_record(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record of a job that ended is written off the loop; a prune that forgets the job meanwhile deletes its
    record, and must do so after that write lands, or the write brings the record back: no index names it, so it
    would never be loaded again, yet it would stay on the disk, pinned, for good."""
    origin.put("/a", b"a")
    async with admin_node(node_config(origin, tmp_path / "c"), keep=3600.0) as node:
        disk = node.edge.node.store.disk
        writing, written, landed = asyncio.Event(), asyncio.Event(), asyncio.Event()
        put = disk.put

        async def held_put(key: str, value: bytes, *args: object, **kwargs: object) -> bool:
            if not (key.startswith("job:") and b'"state": "done"' in value):
                return await put(key, value, *args, **kwargs)  # type: ignore[arg-type]
            writing.set()
            await written.wait()
            try:
                return await put(key, value, *args, **kwargs)  # type: ignore[arg-type]
            finally:
                landed.set()

        monkeypatch.setattr(disk, "put", held_put)
        _, job = await submit(node, ["http://video.test/a"])
        job_id = str(job["id"])
        await writing.wait()  # its last record, "done", is on its way to the disk
        pruned = asyncio.ensure_future(node.jobs.prune(time.time() + 3601))  # the job is forgotten meanwhile
        # The prune waits for the write (or, on the code before the fix, deleted the record at once): a second
        # is far more than a delete takes, and either way the write is let go only after it.
        await asyncio.wait([pruned], timeout=1.0)
        written.set()
        await asyncio.wait_for(landed.wait(), 10)
        await asyncio.wait_for(pruned, 10)
        assert (await node.call("GET", f"/prefetch/{job_id}"))[0] == 404
        assert await disk.get(f"job:{job_id}") is None


async def test_retention_zero_forgets_a_job_once_it_is_done(origin: Origin, tmp_path: Path) -> None:
    origin.put("/a", b"a")
    async with admin_node(node_config(origin, tmp_path / "c"), keep=0.0, max_jobs=1) as node:
        _, job = await submit(node, ["http://video.test/a"])
        await asyncio.wait_for(node.jobs._tasks[str(job["id"])], 60)
        status, second = await submit(node, ["http://video.test/a"])  # the first no longer takes a place
        assert status == 202, second
        assert [j["id"] for j in (await node.call("GET", "/prefetch"))[1]] == [second["id"]]  # type: ignore[index]


async def test_jobs_past_the_bound_are_refused_until_one_is_deleted(origin: Origin, tmp_path: Path) -> None:
    async with admin_node(node_config(origin, tmp_path / "c"), max_jobs=2) as node:
        body = {"urls": ["http://video.test/later"], "window": closed_window()}
        first, second = [(await submit(node, body))[1]["id"] for _ in range(2)]
        status, answer = await submit(node, body)
        assert status == 429
        assert "2 prefetch jobs of 'ops' are kept (at most 2 a token)" in str(answer["error"])
        assert len(node.jobs.jobs) == 2
        status, gone = await node.call("DELETE", f"/prefetch/{first}")
        assert (status, gone) == (200, {"cancelled": first, "state": "waiting-window"})
        assert (await submit(node, body))[0] == 429  # a cancelled job is still kept, and listed
        status, gone = await node.call("DELETE", f"/prefetch/{first}")
        assert (status, gone) == (200, {"deleted": first, "state": "cancelled"})
        status, third = await submit(node, body)
        assert status == 202
        assert sorted(node.jobs.jobs) == sorted([str(second), str(third["id"])])
        assert (await node.call("DELETE", f"/prefetch/{first}"))[0] == 404
    assert sum(origin.hits.values()) == 0


async def test_a_tokens_jobs_hold_at_most_max_held_bytes_of_urls(origin: Origin, tmp_path: Path) -> None:
    """max_jobs jobs of max_urls URLs each, all kept in memory until forgotten, was no bound a node could keep (1,000
    lists of 1 MiB come to 3.8 GB). A token's kept jobs hold at most max_held bytes of URLs (admin.held): a job past it
    gets 429 and the reason, for that token only, and a manifest's URLs past it are dropped, not fetched."""
    one = cost(["http://video.test/h/0"])  # every URL of the lists is as long
    for i in range(10):
        origin.put(f"/h/{i}", b"h")
        origin.put(f"/h/s{i}", b"s")
    origin.put("/h/index.m3u8", ("#EXTM3U\n" + "".join(f"#EXTINF:6,\ns{i}\n" for i in range(10))).encode())
    async with admin_node(node_config(origin, tmp_path / "c"), max_held=7 * one) as node:
        status, a = await node.call("POST", "/prefetch", VIDEOS, json=[f"http://video.test/h/{i}" for i in range(5)])
        assert status == 202
        view = await node.finished(str(a["id"]))  # type: ignore[call-overload]
        status, b = await node.call("POST", "/prefetch", VIDEOS, json=[f"http://video.test/h/{i}" for i in (5, 6, 7)])
        assert (status, b) == (429, {"error": (
            f"the URLs of the prefetch jobs of 'videos' hold {5 * one} bytes and this job's {3 * one} more (at most "
            f"{7 * one} a token): delete finished ones (DELETE /prefetch/{{id}})")})  # fmt: skip
        status, c = await node.call("POST", "/prefetch", OPERATOR, json=[f"http://video.test/h/{i}" for i in (8, 9)])
        assert status == 202  # another token's own bound
        await node.finished(str(c["id"]))  # type: ignore[call-overload]
        assert (await node.call("DELETE", f"/prefetch/{view['id']}", VIDEOS))[0] == 200
        # The playlist's URL is 142 bytes, each segment's 134: 5 of the 10 fit the 7 x 133 the token may hold.
        assert (cost(["http://video.test/h/index.m3u8"]), cost(["http://video.test/h/s0"]), one) == (142, 134, 133)
        status, m = await node.call("POST", "/prefetch", VIDEOS, json={"urls": ["http://video.test/h/index.m3u8"]})
        view = await node.finished(str(m["id"]))  # type: ignore[call-overload]
        assert (status, view["total"], view["fetched"], view["dropped"]) == (202, 6, 6, 5), view
    assert sorted(s.path for s in origin.seen) == sorted(
        [*(f"/h/{i}" for i in (0, 1, 2, 3, 4, 8, 9)), "/h/index.m3u8", *(f"/h/s{i}" for i in range(5))]
    )


async def test_a_restarted_runner_counts_the_urls_its_resumed_jobs_hold(tmp_path: Path) -> None:
    """A restart must not give a token its max_held afresh while its kept jobs hold their URLs again."""
    urls = [f"http://video.test/r/{i}" for i in range(3)]
    disk = DiskTier(tmp_path / "d", 64 * 2**20)
    try:
        runner = JobRunner(disk, "http://127.0.0.1:1", max_held=4 * cost(urls[:1]))
        await runner.start()
        job = await runner.submit(Job(id="", owner="videos", urls=urls, window=("00:00", "00:00:01")))
        await runner.close()
        again = JobRunner(disk, "http://127.0.0.1:1", max_held=4 * cost(urls[:1]))
        await again.start()
        try:
            assert again.held.of("videos") == cost(urls)
            with pytest.raises(JobsFull, match="of 'videos' hold"):
                await again.submit(Job(id="", owner="videos", urls=urls[:2]))
            await again.delete(job.id)
            assert again.held.of("videos") == 0
        finally:
            await again.close()
    finally:
        disk.close()


async def test_delete_cancels_a_running_job_then_forgets_it(origin: Origin, tmp_path: Path) -> None:
    for i in range(3):
        origin.put(f"/slow/{i}", b"s" * 1000)
    origin.gate = asyncio.Event()  # the origin holds its answers: the job is running, mid-fetch
    async with admin_node(node_config(origin, tmp_path / "c")) as node:
        _, job = await submit(node, {"urls": [f"http://video.test/slow/{i}" for i in range(3)], "concurrency": 1})
        job_id = str(job["id"])
        await origin.wait_for_requests(1)
        status, answer = await node.call("DELETE", f"/prefetch/{job_id}")
        assert (status, answer) == (200, {"cancelled": job_id, "state": "running"})
        status, view = await node.call("GET", f"/prefetch/{job_id}")
        assert (status, view["state"], view["done"]) == (200, "cancelled", 0)  # type: ignore[call-overload]
        status, answer = await node.call("DELETE", f"/prefetch/{job_id}")
        assert (status, answer) == (200, {"deleted": job_id, "state": "cancelled"})
        assert (await node.call("GET", f"/prefetch/{job_id}"))[0] == 404
        assert await node.edge.node.store.disk.get(f"job:{job_id}") is None
        origin.gate.set()
        assert (origin.hits["/slow/0"], origin.hits["/slow/1"], origin.hits["/slow/2"]) == (1, 0, 0)


async def test_a_redirect_is_never_followed(origin: Origin, tmp_path: Path) -> None:
    internal = Origin()  # an address inside the network that no configured site names
    await internal.start()
    try:
        internal.put("/secret", b"internal only")
        origin.put("/r", b"", status=302, headers={"Location": f"{internal.url}/secret", "Cache-Control": "no-store"})
        origin.put("/same", b"", status=301, headers={"Location": "http://video.test/a", "Cache-Control": "no-store"})
        origin.put("/a", b"a")
        async with admin_node(node_config(origin, tmp_path / "c")) as node:
            _, job = await submit(node, ["http://video.test/r", "http://video.test/same"])
            view = await node.finished(str(job["id"]))
        assert internal.hits == {}
        assert (view["done"], view["fetched"], view["failed"]) == (2, 0, {"status 302": 1, "status 301": 1})
        assert (origin.hits["/r"], origin.hits["/same"], origin.hits["/a"]) == (1, 1, 0)
    finally:
        await internal.stop()


def ladder(origin: Origin, segments: int) -> None:
    origin.put("/hls/master.m3u8", b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nlow/index.m3u8\n"
               b"#EXT-X-STREAM-INF:BANDWIDTH=2\nhigh/index.m3u8\n")  # fmt: skip
    for r in ("low", "high"):
        media = '#EXTM3U\n#EXT-X-MAP:URI="init.mp4"\n' + "".join(f"#EXTINF:6,\nseg{i}.m4s\n" for i in range(segments))
        origin.put(f"/hls/{r}/index.m3u8", media.encode())
        for name in ["init.mp4", *(f"seg{i}.m4s" for i in range(segments))]:
            origin.put(f"/hls/{r}/{name}", f"{r}/{name}".encode())


async def test_expansion_stops_at_max_urls_and_counts_the_rest(origin: Origin, tmp_path: Path) -> None:
    ladder(origin, 8)  # 1 master + 2 media playlists + 2 x (init + 8 segments) = 21 URLs
    async with admin_node(node_config(origin, tmp_path / "c"), max_urls=10) as node:
        _, job = await submit(node, {"urls": ["http://video.test/hls/master.m3u8"], "concurrency": 1})
        view = await node.finished(str(job["id"]))
        # One at a time, in order: master, low, high, then low's 9 of which 7 fit; high's 9 find no room.
        assert (view["total"], view["fetched"], view["dropped"]) == (10, 10, 11)
        fetched = ["init.mp4", *(f"seg{i}.m4s" for i in range(6))]
        assert [origin.hits[f"/hls/low/{n}"] for n in fetched] == [1] * 7
        assert origin.hits["/hls/low/seg6.m4s"] + origin.hits["/hls/low/seg7.m4s"] == 0
        assert sum(origin.hits[f"/hls/high/{n}"] for n in ["init.mp4", *(f"seg{i}.m4s" for i in range(8))]) == 0
        status, answer = await submit(node, [f"http://video.test/{i}" for i in range(11)])
        assert (status, answer) == (400, {"error": "at most 10 URLs per job"})


async def test_a_manifest_past_max_manifest_is_filled_not_held_nor_expanded(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner held a manifest's whole body to expand it: an origin's 1.5 GiB "x.m3u8" took the worker's RSS
    from 60 MiB to 1.9 GiB. Past MAX_MANIFEST it keeps nothing, expands nothing and says why."""
    ladder(origin, 8)
    padding = "".join(f"#EXT-X-PADDING:{'x' * 1000}\n" for _ in range(300))  # ~300 KB of comments
    big = '#EXTM3U\n#EXT-X-MAP:URI="init.mp4"\n' + "".join(f"#EXTINF:6,\nseg{i}.m4s\n" for i in range(8)) + padding
    origin.put("/hls/big/index.m3u8", big.encode())
    monkeypatch.setattr(edgecache.admin.jobs, "MAX_MANIFEST", 64 * 1024, raising=False)
    async with admin_node(node_config(origin, tmp_path / "c")) as node:
        _, job = await submit(node, ["http://video.test/hls/big/index.m3u8"])
        view = await node.finished(str(job["id"]))
        assert view["failed"] == {"error manifest over 65536 bytes": 1}, view
        assert (view["state"], view["total"], view["bytes"]) == ("failed", 1, len(big))
        assert origin.hits["/hls/big/index.m3u8"] == 1
        assert sum(origin.hits[k] for k in origin.hits if k != "/hls/big/index.m3u8") == 0
        # One under the bound is expanded as ever.
        _, job = await submit(node, ["http://video.test/hls/master.m3u8"])
        view = await node.finished(str(job["id"]))
        assert (view["state"], view["total"], view["fetched"]) == ("done", 21, 21), view


async def test_a_manifest_that_makes_too_much_is_followed_no_further(origin: Origin, tmp_path: Path) -> None:
    """An origin's playlist of MAX_SEGMENTS + 1 lines (1.2 MB, under MAX_MANIFEST) was expanded whole on the
    parser's thread, and the job fetched its segments up to max_urls; it is refused (core.manifest._Found): the
    playlist is filled, the job says why, and nothing it names is asked of the origin."""
    lines = "".join(f"#EXTINF:6,\n{i}.ts\n" for i in range(edgecache.core.manifest.MAX_SEGMENTS + 1))
    origin.put("/many/index.m3u8", f"#EXTM3U\n{lines}".encode())
    async with admin_node(node_config(origin, tmp_path / "c"), max_urls=4) as node:
        _, job = await submit(node, {"urls": ["http://video.test/many/index.m3u8"], "concurrency": 1})
        view = await node.finished(str(job["id"]))
        assert (view["state"], view["total"], view["fetched"], view["dropped"]) == ("failed", 1, 0, 0), view
        assert view["failed"] == {"error manifest past 100000 URLs or 67108864 chars": 1}
    assert [(s.method, s.path) for s in origin.seen] == [("GET", "/many/index.m3u8")]


async def test_manifests_are_parsed_off_the_loop(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ladder(origin, 2)
    threads: list[threading.Thread] = []
    real = edgecache.core.manifest.parse_hls

    def spy(text: str, base: str, *found: Any) -> edgecache.core.manifest.Playlist | None:
        threads.append(threading.current_thread())
        return real(text, base, *found)

    monkeypatch.setattr(edgecache.core.manifest, "parse_hls", spy)
    monkeypatch.setattr(edgecache.admin.jobs, "parse_hls", spy, raising=False)
    async with admin_node(node_config(origin, tmp_path / "c")) as node:
        _, job = await submit(node, ["http://video.test/hls/master.m3u8"])
        view = await node.finished(str(job["id"]))
        assert (view["total"], view["fetched"]) == (1 + 2 + 2 * 3, 9)
    assert len(threads) == 3
    assert threading.main_thread() not in threads


async def test_prefetch_is_not_subject_to_the_sites_client_acl(origin: Origin, tmp_path: Path) -> None:
    origin.put("/a", b"a" * 1000)
    origin.put("/b", b"b" * 1000)
    cfg = node_config(origin, tmp_path / "c")
    videos = replace(cfg.sites[0], allow=(ip_network("10.0.0.0/8"),))
    async with admin_node(replace(cfg, sites=(videos,))) as node:
        _, job = await submit(node, ["http://video.test/a"])
        view = await node.finished(str(job["id"]))
        assert (view["fetched"], view["failed"]) == (1, {})
        assert origin.hits["/a"] == 1
        for path in ("/a", "/b"):  # a client on 127.0.0.1 is still refused, whatever it sends
            for headers in ({}, {"Edgecache-Hop": "node1"}, {"X-Forwarded-For": "10.0.0.1"}):
                status, _, body = await node.edge.get(path, **headers)
                assert (status, body) == (403, b"this address may not use site 'videos'\n")
        assert (origin.hits["/a"], origin.hits["/b"]) == (1, 0)


async def test_a_served_node_prefetches_past_the_acl_through_its_own_socket(origin: Origin, tmp_path: Path) -> None:
    """The same through `edgecache serve` with two workers: the internal socket is the one server.py makes."""
    origin.put("/a", b"a" * 1000)
    port, admin = free_port(), free_port()
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 2\n'
        f'[cache]\ndir = "{tmp_path / "cache"}"\nmemory = "16MiB"\ndisk = "64MiB"\n'
        f'[[sites]]\nname = "videos"\nhosts = ["video.test"]\norigins = ["{origin.url}"]\nallow = ["10.0.0.0/8"]\n'
        f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[[admin.tokens]]\nname = "ops"\ntoken = "{OPERATOR}"\nrole = "operator"\n'
    )
    async with (
        edge_process("serve", "--config", str(config), ready={b"admin listening on": 1}),
        aiohttp.ClientSession() as s,
    ):
        auth = {"Authorization": f"Bearer {OPERATOR}"}
        async with s.post(f"http://127.0.0.1:{admin}/prefetch", json=["http://video.test/a"], headers=auth) as r:
            assert r.status == 202
            job_id = (await r.json())["id"]
        view: dict[str, object] = {}
        for _ in range(200):  # the job's own state says when it is done (no sleep decides the outcome)
            async with s.get(f"http://127.0.0.1:{admin}/prefetch/{job_id}", headers=auth) as r:
                view = await r.json()
            if view["state"] == "done":
                break
            await asyncio.sleep(0.05)
        assert (view["state"], view["fetched"], view["failed"]) == ("done", 1, {})
        async with s.get(f"http://127.0.0.1:{port}/a", headers={"Host": "video.test"}) as r:
            assert (r.status, await r.read()) == (403, b"this address may not use site 'videos'\n")
    assert origin.hits["/a"] == 1


async def test_a_url_a_purge_refuses_is_refused_by_a_prefetch_job_too(origin: Origin, tmp_path: Path) -> None:
    """A prefetch job took URLs a purge refuses (a space, an encoded NUL, a path too long), answered 202, and each
    failed later at its fetch; both now take a URL by one rule (core.siteurl), and refuse it at once, 400."""
    bad = ["http://video.test/a b", "http://video.test/a%00b", "http://video.test/" + "a" * 9000]
    async with admin_node(node_config(origin, tmp_path / "c")) as node:
        for url in bad:
            purged = await node.call("POST", "/purge", json={"url": url})
            fetched = await node.call("POST", "/prefetch", json=[url])
            assert (purged[0], fetched[0]) == (400, 400), (url, purged, fetched)
            assert isinstance(fetched[1], dict)
            assert fetched[1]["error"].startswith("item 0: "), fetched
        assert (await node.call("GET", "/prefetch"))[1] == []
    assert origin.seen == []


async def test_one_providers_jobs_leave_another_token_its_share(origin: Origin, tmp_path: Path) -> None:
    """max_jobs was the node's: one provider's token, with 1,000 jobs in a window that never opens (a minute of
    requests), left every other token's POST /prefetch refused with 429, and none could delete them (another
    provider's jobs are answered 404). The bound is each token's now."""
    origin.put("/a", b"a")
    async with admin_node(node_config(origin, tmp_path / "c"), max_jobs=2) as node:
        later = {"urls": ["http://video.test/later"], "window": closed_window()}
        for _ in range(2):
            assert (await node.call("POST", "/prefetch", VIDEOS, json=later))[0] == 202
        status, answer = await node.call("POST", "/prefetch", VIDEOS, json=later)
        assert status == 429
        assert isinstance(answer, dict)
        assert str(answer["error"]).startswith("2 prefetch jobs of 'videos' are kept (at most 2 a token)")
        status, job = await submit(node, ["http://video.test/a"])
        assert status == 202, job
        assert (await node.finished(str(job["id"])))["state"] == "done"
    assert (origin.hits["/a"], origin.hits["/later"]) == (1, 0)


class CpuStretch:
    """The most CPU time the loop's thread spent between two turns of the loop, garbage collection left out: how
    long the loop would not turn on a machine of its own (a wall-clock stall also counts waits for a CPU)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.worst, self.gc = loop, 0.0, 0.0
        self._started = 0.0
        gc.callbacks.append(self._collecting)
        self._last = (time.thread_time(), self.gc)
        self._handle = loop.call_later(0.001, self._tick)

    def _collecting(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.gc += time.thread_time() - self._started

    def _tick(self) -> None:
        now = (time.thread_time(), self.gc)
        self.worst = max(self.worst, (now[0] - self._last[0]) - (now[1] - self._last[1]))
        self._last = now
        self._handle = self.loop.call_later(0.001, self._tick)

    def stop(self) -> float:
        self._handle.cancel()
        gc.callbacks.remove(self._collecting)
        self._tick()
        self._handle.cancel()
        return self.worst


async def test_a_mebibyte_of_urls_is_checked_without_stalling_the_loop(origin: Origin, tmp_path: Path) -> None:
    """Each URL of a job is checked (core.siteurl, 10-40 us) before the job is taken, and the job was copied
    whole (dataclasses.asdict) for its record and again for its answer: the 40,000 URLs a 1 MiB list holds kept
    the loop of the worker, which serves clients too, from turning for 0.45 s (1.9 s on a busy machine). The loop
    turns between batches of URLs now, and neither copy is made; a list refused at its last URL is still refused
    whole."""
    other = Site(name="other", hosts=("other.test",), origins=(origin.url,))
    urls = [f"http://video.test/m/{i}" for i in range(40_000)]
    body = "\n".join(urls).encode()
    assert len(body) < 1024 * 1024
    window = closed_window()
    query = {"window_start": window["start"], "window_end": window["end"]}
    async with admin_node(node_config(origin, tmp_path / "c", other)) as node:
        probe = CpuStretch(asyncio.get_running_loop())
        refused = await node.call("POST", "/prefetch", VIDEOS, data=body + b"\nhttp://other.test/x")  # not JSON: a list
        assert refused == (403, {"error": "token 'videos' may act on its own sites only"})
        assert (await node.call("GET", "/prefetch"))[1] == []
        status, job = await node.call("POST", "/prefetch", VIDEOS, data=body, params=query)
        assert status == 202, job
        assert isinstance(job, dict)
        assert (job["total"], job["state"]) == (40_000, "waiting-window")
        assert probe.stop() < 0.15  # CPU seconds: a machine's load does not lengthen them
    assert origin.seen == []


async def test_a_job_fetches_each_url_as_written(origin: Origin, tmp_path: Path) -> None:
    """The job's own request went through yarl, which decoded %3B to ';' (another key, another origin request: the
    job for `/a%3Bb` fetched `/a;b`, and failed 404) and escaped '|'; a manifest's segment with a space failed as a
    URL no site has. Each is now fetched as written, a space percent-encoded as a player's client does, and is then
    a hit for the viewer asking it so."""
    written = ("/a%3Bb", "/p%40q|r", "/s?x=%2F%3F", "/m/x%3By.ts", "/m/sp%20ace.ts")
    for target in written:
        origin.put(target, target.encode())
    origin.put("/m/index.m3u8", b"#EXTM3U\n#EXTINF:6,\nx%3By.ts\n#EXTINF:6,\nsp ace.ts\n#EXT-X-ENDLIST\n")
    async with admin_node(node_config(origin, tmp_path / "c")) as node:
        _, job = await submit(node, [f"http://video.test{t}" for t in (*written[:3], "/m/index.m3u8")])
        view = await node.finished(str(job["id"]))
        assert (view["done"], view["fetched"], view["failed"]) == (6, 6, {})
        for target in written:
            as_written = URL(node.edge.url + target, encoded=True)
            async with node.edge.session.get(as_written, headers={"Host": "video.test"}) as r:
                got = (r.status, r.headers["Cache-Status"], await r.read())
            assert got == (200, "edgecache; hit", target.encode()), target
    assert {t: origin.hits[t] for t in written} == dict.fromkeys(written, 1)
