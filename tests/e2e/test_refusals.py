"""Requests refused before any lookup (core.admit: no site, a bad target, the site's ACL, a signed URL, the rate limit,
only-if-cached with nothing stored) are answered on the fast path, as the full handler answers them: the same bytes
(but Date), the same access-log lines, the same counters, the same tokens of the client's rate spent, and the
connection kept open for the next request. Each refusal is asked twice in a row, on one connection."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path

from edgecache.config import Config, Site
from edgecache.core.signing import Signing
from tests.conftest import make_config, start_edge
from tests.e2e.test_hops import cluster, origins, owner_index
from tests.origin import Origin
from tests.samples import applied
from tests.wire import fast_path_outcomes

BODY = bytes(range(256)) * 20
RULES = Signing(("s3cret-for-refusals",))
BURST = 12  # tokens; the rate refills none within the test


def request(path: str, host: str = "video.test", *fields: str, method: str = "GET") -> bytes:
    return ("\r\n".join([f"{method} {path} HTTP/1.1", f"Host: {host}", *fields]) + "\r\n\r\n").encode()


ONLY = "Cache-Control: only-if-cached"
ASKED = [  # (request, status), each asked twice: the rate's tokens (BURST) run out at the HEAD's second 200
    (request("/a"), 200),  # tokens 1 and 2
    (request("/a", "nowhere.test"), 421),
    (request("/a", "nowhere.test", method="HEAD"), 421),
    (request("/a", ""), 400),
    (request("/a%00b"), 400),
    (request("/a", "closed.test"), 403),  # the ACL: no token spent
    (request("/v/a", "signed.test"), 403),  # no token: none spent
    (request("/v/a?expires=1&sig=AAAA", "signed.test", method="HEAD"), 403),
    (request("/missing", "video.test", ONLY), 504),  # tokens 3, 4
    (request("/missing", "video.test", ONLY, method="HEAD"), 504),  # 5, 6
    (request("/a", "video.test", "Range: bytes=0-9"), 206),  # 7, 8
    (request("/a", "video.test", ONLY), 200),  # 9, 10
    (request("/a", "video.test", method="HEAD"), 200),  # 11, 12: the last
    (request("/a"), 429),
    (request("/a", "video.test", "Range: bytes=0-9"), 429),
    (request("/missing", "video.test", ONLY), 429),  # the limiter before only-if-cached, as for any request
    (request("/a", "closed.test"), 403),  # the ACL before the limiter
    (request("/v/a", "signed.test"), 403),  # the signed URL before the limiter
    (request("/a", "nowhere.test"), 421),
]


def config(tmp_path: Path, origin: Origin, fast: bool, log: Path) -> Config:
    base = make_config(tmp_path, [origin.url])
    videos = replace(base.sites[0], hosts=("video.test",))
    closed = Site("closed", ("closed.test",), (origin.url,), allow=(ip_network("203.0.113.0/24"),))
    signed = Site("signed", ("signed.test",), (origin.url,), signing=RULES)
    sites = (videos, closed, signed)
    return replace(base, sites=sites, fast_path=fast, rate_limit=0.001, burst=float(BURST), access_log=log)


Counters = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def counters() -> Counters:
    out = {}
    for name in ("edgecache_requests_total", "edgecache_site_served_bytes_total"):
        for metric in applied().restricted_registry([name]).collect():
            for s in metric.samples:
                if s.name == name:
                    out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


async def answer(reader: asyncio.StreamReader, head_only: bool) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head, re.IGNORECASE)
    body = b"" if head_only or length is None else await reader.readexactly(int(length[1]))
    return re.sub(rb"\r\n(Date|Age): [^\r]*", rb"\r\n\1: -", head) + body


async def run(origin: Origin, tmp_path: Path, fast: bool) -> tuple[list[bytes], list[dict[str, object]], Counters]:
    log = tmp_path / f"{fast}.log"
    async with start_edge(config(tmp_path / str(fast), origin, fast, log)) as edge, asyncio.timeout(30):
        before = counters()
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        answers = []
        try:
            for data, _ in ASKED:
                for _ in range(2):
                    writer.write(data)
                    answers.append(await answer(reader, data.startswith(b"HEAD ")))
        finally:
            writer.close()
        after = counters()
    lines = [json.loads(x) for x in log.read_bytes().splitlines()]
    for line in lines:
        for field in ("time", "id", "ms", "ttfb_ms"):  # the clock's
            del line[field]
        line["origin_ms"] = line["origin_ms"] is not None
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    return answers, lines, delta


async def test_refusals_are_answered_on_the_fast_path_as_the_full_handler_answers_them(
    origin: Origin, tmp_path: Path
) -> None:
    origin.put("/a", BODY)
    origin.put("/v/a", BODY)
    before = fast_path_outcomes()
    fast = await run(origin, tmp_path, fast=True)
    outcomes = {k: v - before[k] for k, v in fast_path_outcomes().items()}
    hits = dict(origin.hits)
    full = await run(origin, tmp_path, fast=False)
    assert [int(a.split(b" ", 2)[1]) for a in fast[0]] == [status for _, status in ASKED for _ in range(2)]
    assert fast[0] == full[0]  # byte for byte, but Date and Age
    assert fast[1] == full[1]
    assert fast[2] == full[2]
    # Every request answered here (the first miss too: the fast path fills it), none handed to aiohttp, and the
    # origin asked once for /a, never for what was refused.
    # None handed to aiohttp on any node: not the owner's miss, nor the look-aside it sends, nor the refusals.
    assert outcomes["handed_off"] == 0  # (answered counts the nodes' health checks too)
    assert outcomes["answered"] == 2 * len(ASKED)
    assert hits == {"/a": 1}
    assert {k: v - hits.get(k, 0) for k, v in origin.hits.items()} == {"/a": 1}


async def forwarded(origin_dir: Path, fast: bool) -> tuple[list[bytes], dict[str, float]]:
    """Requests for another node's object from one viewer, on one connection to a node that does not own it: the
    forward is remembered after the first (forwardmemo), and the viewer is judged again on each. The owner's miss
    asks the node that owned the object before it (a look-aside, answered 504 there: nothing held)."""
    async with origins() as origs, cluster(origs, origin_dir, {}, fast_path=fast, rate_limit=0.001, burst=2.0) as nodes:
        for o in origs:
            o.put("/a", BODY)
        other = nodes[(owner_index("/a") + 1) % 3]
        before = fast_path_outcomes()
        reader, writer = await asyncio.open_connection("127.0.0.1", other.port)
        answers = []
        try:
            for _ in range(4):  # two tokens: forwarded twice, then refused twice
                writer.write(request("/a"))
                answers.append(await answer(reader, False))
            outcomes = {k: v - before[k] for k, v in fast_path_outcomes().items()}
        finally:
            writer.close()
    return answers, outcomes


async def test_a_remembered_forward_is_refused_on_the_fast_path_once_the_viewer_is_out_of_tokens(
    tmp_path: Path,
) -> None:
    fast, outcomes = await forwarded(tmp_path / "fast", True)
    full, _ = await forwarded(tmp_path / "full", False)
    assert [int(a.split(b" ", 2)[1]) for a in fast] == [200, 200, 429, 429]
    assert fast[2:] == full[2:]  # byte for byte, but Date (the 200s carry the owner's Age and Cache-Status)
    assert fast[1].endswith(BODY)
    # None handed to aiohttp on any node: not the owner's miss, nor the look-aside it sends, nor the refusals.
    assert outcomes["handed_off"] == 0  # (answered counts the nodes' health checks too)


async def test_what_another_worker_made_this_one_forget_is_loaded_again_before_it_is_refused(
    origin: Origin, tmp_path: Path
) -> None:
    """A worker forgets what it holds when another purges (Store.catch_up). Should that happen between a request's
    loads from the disk and its decision, "not held" is not "not stored": the request loads again, and an
    only-if-cached request for a stored object gets it, not a 504."""
    origin.put("/a", BODY)
    config = replace(make_config(tmp_path / "c", [origin.url], memory_bytes=0), fast_path=True)
    async with start_edge(config) as edge, asyncio.timeout(20):
        assert (await edge.get("/a"))[::2] == (200, BODY)
        await edge.node.engine.flush()
        store = edge.node.engine.store
        store._forget_held()
        real = store.get_meta
        armed = [True]

        async def get_meta(key: str) -> object:
            meta = await real(key)
            if armed.pop() if armed else False:  # once, right after the load: as another worker's purge would
                store._forget_held()
                store.forgotten = getattr(store, "forgotten", 0) + 1
            return meta

        store.get_meta = get_meta  # type: ignore[method-assign, assignment]
        for _ in range(2):
            status, _, body = await edge.get("/a", **{"Cache-Control": "only-if-cached"})
            assert (status, body) == (200, BODY)
        assert not armed
    assert origin.hits["/a"] == 1


async def owner_logs(tmp_path: Path, fast: bool) -> tuple[list[tuple[object, ...]], list[bytes]]:
    """A viewer (127.0.0.5) asks a node that does not own the objects: an only-if-cached miss, refused by the owner,
    and a private miss, streamed by the owner. What the owner logs, and the viewer's answers."""
    async with origins() as origs, cluster(origs, tmp_path, {}, fast_path=fast) as nodes:
        for o in origs:
            o.put("/p", BODY, headers={"Cache-Control": "private"})
        owner = owner_index("/p")
        other = nodes[(owner + 1) % 3]
        answers = []
        for fields in (("Cache-Control: only-if-cached",), ()):
            reader, writer = await asyncio.open_connection("127.0.0.1", other.port, local_addr=("127.0.0.5", 0))
            try:
                writer.write(request("/p", "video.test", *fields, "Connection: close"))
                answers.append(re.sub(rb"\r\n(Date|Age): [^\r]*", rb"\r\n\1: -", await reader.read(-1)))
            finally:
                writer.close()
    lines = [json.loads(x) for x in (tmp_path / f"node{owner + 1}.log").read_bytes().splitlines()]
    return [(x["client"], x["path"], x["status"], x["cache"], x["bytes"], x["for_peer"]) for x in lines], answers


async def test_the_owner_logs_a_forwarded_refusal_or_stream_as_its_viewers(tmp_path: Path) -> None:
    fast = await owner_logs(tmp_path / "fast", True)
    full = await owner_logs(tmp_path / "full", False)
    assert fast == full
    assert [line[:4] + line[5:] for line in fast[0]] == [
        ("127.0.0.5", "/p", 504, "error", True),
        ("127.0.0.5", "/p", 200, "miss", True),
    ]
    assert fast[1][1].endswith(b"\r\n\r\n" + BODY)
