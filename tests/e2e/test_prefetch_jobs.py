"""Prefetch jobs a provider manages: states in the listing, cancel then forget, priority over the shared slots,
windows that pause and resume a job (on a clock the test drives), the cap on network bytes only, and the CLI;
all through the real admin API of a real edge, against a real origin that counts its hits."""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from edgecache import cli
from edgecache.admin.jobs import REVOKED
from edgecache.config import Site
from tests.e2e.adminkit import OPERATOR, VIDEOS, AdminNode, admin_node, node_config
from tests.origin import Obj, Origin

DAY = datetime.date(2026, 3, 1)
WINDOW = {"start": "02:00", "end": "06:00"}


class Clock:
    """The runner's wall clock, set by the test."""

    def __init__(self, hhmm: str) -> None:
        self.at = self.time(hhmm)

    @staticmethod
    def time(hhmm: str, day: datetime.date = DAY) -> datetime.datetime:
        return datetime.datetime.combine(day, datetime.time.fromisoformat(hhmm))

    def __call__(self) -> datetime.datetime:
        return self.at


def hold(origin: Origin, *paths: str) -> dict[str, asyncio.Event]:
    """The origin answers these paths only once their event is set (the others at once)."""
    held = {p: asyncio.Event() for p in paths}

    async def wait(request: web.BaseRequest, obj: Obj | None) -> None:
        if request.path in held:
            await held[request.path].wait()

    origin.on_request = wait
    return held


async def submit(node: AdminNode, body: object) -> str:
    status, answer = await node.call("POST", "/prefetch", json=body)
    assert status == 202, answer
    assert isinstance(answer, dict)
    return str(answer["id"])


async def state_of(node: AdminNode, job_id: str) -> dict[str, Any]:
    status, view = await node.call("GET", f"/prefetch/{job_id}")
    assert status == 200, view
    assert isinstance(view, dict)
    return view


async def until(node: AdminNode, check: Callable[[], bool]) -> None:
    await asyncio.wait_for(node.jobs.until(check), 30)


def urls(*paths: str) -> list[str]:
    return [f"http://video.test{p}" for p in paths]


async def test_the_listing_shows_each_state_with_counts_and_bytes(origin: Origin, tmp_path: Path) -> None:
    origin.put("/a/0", b"a" * 1000)
    origin.put("/a/1", b"b" * 2000)
    origin.put("/r/0", b"r" * 300)
    origin.put("/q/0", b"q" * 10)
    held = hold(origin, "/r/0")
    clock = Clock("12:00")
    async with admin_node(node_config(origin, tmp_path / "c"), slots=1, now=clock, keep=3600.0) as node:
        done = await submit(node, urls("/a/0", "/a/1"))
        await node.finished(done)
        failed = await submit(node, urls("/a/0", "/missing"))
        await node.finished(failed)
        waiting = await submit(node, {"urls": urls("/w/0"), "window": WINDOW})
        cancelled = await submit(node, {"urls": urls("/w/1"), "window": WINDOW})
        assert await node.call("DELETE", f"/prefetch/{cancelled}") == (
            200,
            {"cancelled": cancelled, "state": "waiting-window"},
        )
        running = await submit(node, urls("/r/0"))
        await origin.wait_for_requests(3)  # /a/0, /a/1, /missing; then /r/0 is held
        await origin.wait_for_requests(4)
        queued = await submit(node, urls("/q/0"))  # the one slot is /r/0's
        status, listing = await node.call("GET", "/prefetch")
        assert status == 200
        assert isinstance(listing, list)
        seen = {
            j["id"]: (j["state"], j["total"], j["done"], j["fetched"], j["already_cached"], j["failed"], j["bytes"])
            for j in listing
        }
        assert seen == {
            done: ("done", 2, 2, 2, 0, {}, 3000),
            failed: ("failed", 2, 2, 0, 1, {"status 404": 1}, 1000 + len(b"no such object\n")),
            waiting: ("waiting-window", 1, 0, 0, 0, {}, 0),
            cancelled: ("cancelled", 1, 0, 0, 0, {}, 0),
            running: ("running", 1, 0, 0, 0, {}, 0),
            queued: ("queued", 1, 0, 0, 0, {}, 0),
        }
        assert {j["id"]: j["network_bytes"] for j in listing}[done] == 3000
        held["/r/0"].set()
        await node.finished(running)
        await node.finished(queued)
        assert [origin.hits[p] for p in ("/a/0", "/a/1", "/missing", "/r/0", "/q/0", "/w/0")] == [1, 1, 1, 1, 1, 0]
        # Every finished state is forgotten after the retention time; a job still waiting for its window is not.
        await node.jobs.prune(time.time() + 3601)
        _, listing = await node.call("GET", "/prefetch")
        assert [j["id"] for j in listing] == [waiting]  # type: ignore[index]


async def test_a_later_job_of_higher_priority_takes_the_slot_between_urls(origin: Origin, tmp_path: Path) -> None:
    for p in ("/lo/0", "/lo/1", "/lo/2", "/hi/0", "/hi/1"):
        origin.put(p, p.encode())
    held = hold(origin, "/lo/0", "/hi/0")
    async with admin_node(node_config(origin, tmp_path / "c"), slots=1) as node:
        low = await submit(node, {"urls": urls("/lo/0", "/lo/1", "/lo/2"), "priority": 0, "concurrency": 1})
        await origin.wait_for_requests(1)
        high = await submit(node, {"urls": urls("/hi/0", "/hi/1"), "priority": 5, "concurrency": 1})
        assert ((await state_of(node, low))["state"], (await state_of(node, high))["state"]) == ("running", "queued")
        held["/lo/0"].set()  # the low job's URL in flight finishes; its next one waits: the slot is the high job's
        await origin.wait_for_requests(2)
        lo, hi = await state_of(node, low), await state_of(node, high)
        assert ((lo["state"], lo["done"]), (hi["state"], hi["done"])) == (("queued", 1), ("running", 0))
        held["/hi/0"].set()
        await node.finished(high)
        await node.finished(low)
    assert [s.path for s in origin.seen] == ["/lo/0", "/hi/0", "/hi/1", "/lo/1", "/lo/2"]


async def test_a_window_pauses_the_job_when_it_ends_and_resumes_it_when_it_opens(
    origin: Origin, tmp_path: Path
) -> None:
    for i in range(3):
        origin.put(f"/w/{i}", b"w" * 100)
    held = hold(origin, "/w/0")
    clock = Clock("05:59")
    async with admin_node(node_config(origin, tmp_path / "c"), now=clock) as node:
        job_id = await submit(node, {"urls": urls("/w/0", "/w/1", "/w/2"), "window": WINDOW, "concurrency": 1})
        await origin.wait_for_requests(1)
        assert (await state_of(node, job_id))["state"] == "running"
        clock.at = Clock.time("06:00")  # the window ends while /w/0 is in flight: it finishes, no URL follows
        held["/w/0"].set()
        job = node.jobs.jobs[job_id]
        await until(node, lambda: job.state == "waiting-window")
        view = await state_of(node, job_id)
        assert (view["state"], view["done"], view["fetched"]) == ("waiting-window", 1, 1)
        clock.at = Clock.time("01:59", DAY + datetime.timedelta(days=1))
        node.jobs.wake()  # what the runner's timer does at a boundary: still closed, so nothing starts
        await until(node, lambda: not node.jobs._wake.is_set())
        assert (await state_of(node, job_id))["state"] == "waiting-window"
        assert sum(origin.hits.values()) == 1
        clock.at = Clock.time("02:00", DAY + datetime.timedelta(days=1))
        node.jobs.wake()
        view = await node.finished(job_id)
        assert (view["state"], view["done"], view["fetched"]) == ("done", 3, 3)
    assert [origin.hits[f"/w/{i}"] for i in range(3)] == [1, 1, 1]


async def test_the_cap_counts_network_bytes_not_this_nodes_own_cache(origin: Origin, tmp_path: Path) -> None:
    for i in range(4):
        origin.put(f"/c/{i}", bytes([i]) * 64 * 1024)
    # An origin that says "hit" itself (another cache in front of it) gains nothing: the bytes still count.
    origin.put("/liar", b"L" * 5000, headers={"Cache-Control": "max-age=60", "Cache-Status": "edgecache; hit"})
    async with admin_node(node_config(origin, tmp_path / "c")) as node:
        first = await node.finished(await submit(node, {"urls": urls(*(f"/c/{i}" for i in range(4)))}))
        assert (first["fetched"], first["bytes"], first["network_bytes"]) == (4, 4 * 65536, 4 * 65536)
        # 1 KiB/s: were the 256 KiB read back from this node's cache counted, this job would take minutes.
        again = await submit(node, {"urls": urls(*(f"/c/{i}" for i in range(4))), "bandwidth": "1KiB"})
        await asyncio.wait_for(node.jobs._tasks[again], 20)
        view = await state_of(node, again)
        assert (view["already_cached"], view["bytes"], view["network_bytes"]) == (4, 4 * 65536, 0)
        liar = await node.finished(await submit(node, {"urls": urls("/liar"), "bandwidth": "1MiB"}))
        assert (liar["fetched"], liar["already_cached"], liar["network_bytes"]) == (1, 0, 5000)
    assert [origin.hits[f"/c/{i}"] for i in range(4)] == [1, 1, 1, 1]
    assert origin.hits["/liar"] == 1


async def cli_run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The real `edgecache` entry point, on a thread: its blocking HTTP calls reach the admin on this loop."""
    code = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_the_cli_submits_lists_shows_and_cancels(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    origin.put("/x/0", b"x" * 2048)
    held = hold(origin, "/x/0")
    async with admin_node(node_config(origin, tmp_path / "c"), slots=1) as node:
        config = tmp_path / "edge.toml"
        config.write_text(
            f'[cache]\ndir = "{tmp_path / "cli"}"\n'
            f'[[sites]]\nname = "videos"\nhosts = ["video.test"]\norigins = ["{origin.url}"]\n'
            f'[admin]\nlisten = "127.0.0.1:{node.port}"\n'
        )
        listed = tmp_path / "urls.txt"
        listed.write_text("# paths of --site\n/x/0\n")
        monkeypatch.setenv("EDGECACHE_TOKEN", OPERATOR)
        code, out, err = await cli_run(capsys, "prefetch", str(listed), "--site", "videos", "--config", str(config))
        assert (code, err) == (0, "")
        first = out.split()[1].rstrip(":")
        assert out == f"job {first}: 1 URLs, running\n"
        code, out, _ = await cli_run(
            capsys, "prefetch", "submit", str(listed), "--site", "videos", "--priority", "3", "--json", "--config",
            str(config),
        )  # fmt: skip
        second = json.loads(out)
        assert (code, second["state"], second["priority"], second["total"]) == (0, "queued", 3, 1)
        code, out, _ = await cli_run(capsys, "prefetch", "list", "--config", str(config))
        assert code == 0
        rows = [line.split() for line in out.splitlines()]
        assert rows == [
            ["ID", "STATE", "PRIO", "DONE/TOTAL", "FAILED", "BYTES", "NETWORK"],
            [first, "running", "0", "0/1", "0", "0", "B", "0", "B"],
            [second["id"], "queued", "3", "0/1", "0", "0", "B", "0", "B"],
        ]
        code, out, _ = await cli_run(capsys, "prefetch", "cancel", second["id"], "--config", str(config))
        assert (code, out) == (0, f"job {second['id']} cancelled (it was queued); cancel it again to forget it\n")
        code, out, _ = await cli_run(capsys, "prefetch", "cancel", second["id"], "--json", "--config", str(config))
        assert (code, json.loads(out)) == (0, {"deleted": second["id"], "state": "cancelled"})
        held["/x/0"].set()
        await node.finished(first)
        code, out, _ = await cli_run(capsys, "prefetch", "show", first, "--config", str(config))
        assert code == 0
        shown = dict(line.split(":", 1) for line in out.splitlines())
        assert {k: v.strip() for k, v in shown.items() if k in ("state", "done", "fetched", "bytes")} == {
            "state": "done",
            "done": "1 of 1",
            "fetched": "1",
            "bytes": "2.0 KiB read, 2.0 KiB over the network",
        }
        code, out, err = await cli_run(capsys, "prefetch", "show", second["id"], "--config", str(config))
        assert (code, out, err) == (1, "", "edgecache prefetch show: no such job (404)\n")
        monkeypatch.setenv("EDGECACHE_TOKEN", "not-a-token-not-a-token")
        code, out, err = await cli_run(capsys, "prefetch", "list", "--config", str(config))
        assert (code, out, err) == (1, "", "edgecache prefetch list: invalid token (401)\n")
    assert origin.hits["/x/0"] == 1


async def test_a_window_with_an_offset_is_refused_and_other_jobs_go_on(origin: Origin, tmp_path: Path) -> None:
    """Window times are local: one with a UTC offset could not be compared with the node's clock. It was taken,
    stored, and then every later dispatch (every submission, and the node's start) failed with a 500."""
    origin.put("/z/0", b"z" * 100)
    async with admin_node(node_config(origin, tmp_path / "c"), now=Clock("03:00")) as node:
        for window in ({"start": "02:00Z", "end": "06:00"}, {"start": "02:00", "end": "06:00+05:00"}):
            status, answer = await node.call("POST", "/prefetch", json={"urls": urls("/z/0"), "window": window})
            span = f"{window['start']}-{window['end']}"
            assert (status, answer) == (
                400,
                {"error": f"bad option: window {span}: times are local, without an offset"},
            )
        view = await node.finished(await submit(node, {"urls": urls("/z/0"), "window": WINDOW}))
        assert (view["state"], view["fetched"]) == ("done", 1)
    assert origin.hits["/z/0"] == 1


async def test_a_providers_priority_orders_its_own_jobs_and_leaves_another_token_its_share(
    origin: Origin, tmp_path: Path
) -> None:
    """Priority was the node's: any provider could give its jobs 2**31 and take every prefetch slot from the
    others for as long as its lists lasted. Each token now has its share of the slots; its priority orders its own."""
    for p in ("/hi/0", "/hi/1", "/hi/2", "/hi/3", "/lo/0"):
        origin.put(p, p.encode())
    held = hold(origin, "/hi/0", "/hi/1")
    async with admin_node(node_config(origin, tmp_path / "c"), slots=2) as node:
        body = {"urls": urls("/hi/0", "/hi/1", "/hi/2", "/hi/3"), "priority": 2**31, "concurrency": 2}
        status, high = await node.call("POST", "/prefetch", VIDEOS, json=body)
        assert status == 202, high
        await origin.wait_for_requests(2)  # alone, it takes both slots
        low = await submit(node, {"urls": urls("/lo/0"), "priority": 0})
        held["/hi/0"].set()  # a slot frees: it is the other token's share, whatever the priorities
        assert isinstance(high, dict)
        await node.finished(low)
        held["/hi/1"].set()
        await node.finished(str(high["id"]))
    seen = [s.path for s in origin.seen]  # two fetches at once reach the origin in either order
    assert (sorted(seen[:2]), seen[2], sorted(seen[3:])) == (["/hi/0", "/hi/1"], "/lo/0", ["/hi/2", "/hi/3"])


@pytest.mark.parametrize("reload", ["token removed", "site taken from it"])
async def test_a_job_whose_token_a_reload_took_away_fetches_no_more(
    origin: Origin, tmp_path: Path, reload: str
) -> None:
    """A job fetched its URLs whatever became of its token: a provider removed from the config (or from the site)
    went on filling the site from its origin with the jobs it had queued, and resumed them after a restart."""
    for p in ("/r/0", "/r/1", "/r/2"):
        origin.put(p, p.encode())
    held = hold(origin, "/r/0")  # slots=1: one URL at a time
    running = [node_config(origin, tmp_path / "c")]
    async with admin_node(running[0], lambda: running[0], slots=1) as node:
        status, answer = await node.call("POST", "/prefetch", VIDEOS, json={"urls": urls("/r/0", "/r/1", "/r/2")})
        assert status == 202, answer
        assert isinstance(answer, dict)
        await origin.wait_for_requests(1)
        videos = next(t for t in running[0].tokens if t.name == "videos")
        kept = [t for t in running[0].tokens if t is not videos]
        if reload == "site taken from it":
            kept.append(replace(videos, sites=("other",)))
        running[0] = replace(running[0], tokens=tuple(kept))
        held["/r/0"].set()  # the URL in flight finishes; the others are not fetched
        view = await node.finished(answer["id"])
    assert (view["state"], view["fetched"], view["failed"]) == ("failed", 1, {REVOKED: 2})
    assert [s.path for s in origin.seen] == ["/r/0"]


async def test_a_site_whose_origin_hangs_leaves_the_other_sites_a_quarter_of_the_slots(
    origin: Origin, tmp_path: Path
) -> None:
    """One site's origin that hangs (or trickles a byte a second, within the read timeout) held every prefetch slot
    a job of it took, up to the fetch's 600 s, and every other site's jobs waited as long. A site holds at most its
    share of the slots (as of origin connections: proxy.shares.share), all but a quarter on a node of several sites."""
    slow = [f"/slow/{n}" for n in range(4)]
    for p in (*slow, "/other/0"):
        origin.put(p, p.encode())
    held = hold(origin, *slow)
    other = Site(name="other", hosts=("other.test",), origins=(origin.url,))
    async with admin_node(node_config(origin, tmp_path / "c", other), slots=4) as node:
        hung = await submit(node, {"urls": urls(*slow), "concurrency": 4})
        try:
            await origin.wait_for_requests(3)  # all but a quarter of the slots
            view = await asyncio.wait_for(node.finished(await submit(node, ["http://other.test/other/0"])), 10)
            assert (view["state"], view["fetched"]) == ("done", 1)
            assert node.jobs.jobs[hung].done == 0  # not once a slow URL gave up (its read timeout): while all hang
            assert sorted(s.path for s in origin.seen) == ["/other/0", *slow[:3]]  # the fourth slow URL waits
        finally:
            for event in held.values():
                event.set()
        assert (await node.finished(hung))["fetched"] == 4
    assert [origin.hits[p] for p in (*slow, "/other/0")] == [1] * 5
