"""A miss of a Vary'd object whose record names its Vary (a variant not stored yet) is filled on the fast path,
sending the fields the Vary names and no others, as the full handler fills it: the same bytes (but Date and Age), the
same log lines, the origin asked as often and with the same fields, and no connection handed to aiohttp. So is the
first miss of an object whose answer names a Vary its fill could not know to send: the request is decided again, as
its variant's miss (coldmiss.AGAIN), and the origin asked again with the field, as the full handler asks."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from tests.conftest import make_config, start_edge
from tests.origin import Origin
from tests.wire import fast_path_outcomes, read_answer

ASKED = [None, "phone", "phone", "tv", "tv", None, "phone"]  # the X-Device of each request, in order


def by_device(seen: list[str | None]) -> object:
    def hook(request: web.BaseRequest, obj: object) -> web.Response:
        device = request.headers.get("X-Device")
        seen.append(device)
        body = f"for {device or 'anyone'} ".encode() * 300
        headers = {"Cache-Control": "public, max-age=600", "Vary": "X-Device", "Content-Type": "text/plain"}
        return web.Response(body=body, headers=headers)

    return hook


async def run(
    origin: Origin, tmp_path: Path, fast: bool, asked: list[str | None] = ASKED, burst: float | None = None
) -> tuple[list[bytes], list[str], list[str | None]]:
    seen: list[str | None] = []
    origin.on_request = by_device(seen)
    log = tmp_path / f"{fast}.log"
    config = replace(make_config(tmp_path / str(fast), [origin.url]), fast_path=fast, access_log=log)
    if burst is not None:  # rate tokens for that many requests, none refilled in the test's time
        config = replace(config, rate_limit=0.001, burst=burst)
    answers = []
    async with start_edge(config) as edge, asyncio.timeout(30):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            for device in asked:
                field = f"X-Device: {device}\r\n" if device else ""
                writer.write(f"GET /v HTTP/1.1\r\nHost: video.test\r\n{field}\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"\r\nContent-Length: (\d+)\r\n", head)[1])  # type: ignore[index]
                body = await reader.readexactly(length)
                answers.append(re.sub(rb"\r\n(Date|Age): [^\r]*", rb"\r\n\1: -", head) + body)
        finally:
            writer.close()
    lines = [json.loads(x) for x in log.read_bytes().splitlines()]
    return answers, [f"{x['path']} {x['status']} {x['cache']} {x['bytes']}" for x in lines], seen


async def test_a_vary_d_objects_variant_misses_are_the_fast_paths(origin: Origin, tmp_path: Path) -> None:
    origin.put("/v", b"")
    before = fast_path_outcomes()
    fast = await run(origin, tmp_path, fast=True)
    outcomes = {k: v - before[k] for k, v in fast_path_outcomes().items()}
    full = await run(origin, tmp_path, fast=False)
    assert fast == full
    answers, logged, seen = fast
    for device, answer in zip(ASKED, answers, strict=True):
        assert answer.endswith(f"for {device or 'anyone'} ".encode() * 300)
    assert seen == [None, "phone", "tv"]  # each variant asked once, with its own field
    assert [line.split()[2] for line in logged] == ["miss", "miss", "hit", "miss", "hit", "hit", "hit"]
    assert (outcomes["answered"], outcomes["handed_off"]) == (len(ASKED), 0)


async def test_a_first_miss_whose_answer_names_a_vary_is_the_fast_paths(origin: Origin, tmp_path: Path) -> None:
    """Decided again, the request is let in already: one rate token each (a second would refuse the last: 429)."""
    origin.put("/v", b"")
    # Not the no-device variant: the first fill may still be storing it when asked, and its answer then reads the
    # fill (partial) on either path, as the timing falls.
    asked: list[str | None] = ["tv", "tv", "phone", "tv", "phone"]
    before = fast_path_outcomes()
    fast = await run(origin, tmp_path, fast=True, asked=asked, burst=len(asked))
    outcomes = {k: v - before[k] for k, v in fast_path_outcomes().items()}
    full = await run(origin, tmp_path, fast=False, asked=asked, burst=len(asked))
    assert fast == full
    answers, logged, seen = fast
    for device, answer in zip(asked, answers, strict=True):
        assert answer.endswith(f"for {device or 'anyone'} ".encode() * 300)
    # The first fill sends no X-Device (the edge cannot know it matters): its answer is the no-device variant's,
    # stored; the request is then its own variant's miss, asked with its field.
    assert seen == [None, "tv", "phone"]
    assert [line.split()[2] for line in logged] == ["miss", "hit", "miss", "hit", "hit"]
    assert (outcomes["answered"], outcomes["handed_off"]) == (len(asked), 0)


async def test_a_first_vary_miss_on_a_draining_connection_is_answered(origin: Origin, tmp_path: Path) -> None:
    """The connection starts draining (FastServer.shutdown) while the first fill is out: its answer names a Vary,
    and the request, not decided again on a closing connection, is the full handler's, which answers it (it was
    closed unanswered). A review's probe."""
    release, asked = asyncio.Event(), asyncio.Event()
    seen: list[str | None] = []

    async def held(request: web.BaseRequest, obj: object) -> web.Response:
        seen.append(request.headers.get("X-Device"))
        asked.set()
        await release.wait()
        device = request.headers.get("X-Device")
        headers = {"Cache-Control": "public, max-age=600", "Vary": "X-Device", "Content-Type": "text/plain"}
        return web.Response(body=f"for {device or 'anyone'}".encode(), headers=headers)

    origin.put("/v", b"")
    origin.on_request = held
    async with start_edge(make_config(tmp_path / "c", [origin.url])) as edge, asyncio.timeout(20):
        assert edge.fast is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            writer.write(b"GET /v HTTP/1.1\r\nHost: video.test\r\nX-Device: phone\r\n\r\n")
            await asyncio.wait_for(asked.wait(), 10)
            for conn in list(edge.fast.connections):
                conn.close_when_idle()
            release.set()
            answer = await read_answer(reader)
        finally:
            writer.close()
    assert (answer[0], answer[2]) == (200, b"for phone")
    assert seen == [None, "phone"]


async def test_an_origin_whose_vary_changes_each_answer_spends_the_tries_on_the_fast_path(
    origin: Origin, tmp_path: Path
) -> None:
    """Each answer names another Vary, so each fill's answer is another variant's than the request's: its tries are
    spent (core.churn) and it is relayed, as the full handler answers it: the same answer (a relay whose answers
    keep varying on other fields has none to give: 502), the origin asked as often, and no connection handed to
    aiohttp. Before, the fast path decided it again once uncounted, then handed it off, and the full handler began
    its tries afresh: one origin request more, and handed_off 1."""
    fields = "".join(f"X-{n}: {n.lower()}\r\n" for n in "ABCDEFGHIJ")

    async def answer(fast: bool) -> tuple[bytes, int]:
        seen: list[str | None] = []

        def hook(request: web.BaseRequest, obj: object) -> web.Response:
            seen.append(request.headers.get("X-A"))
            vary = f"X-{'ABCDEFGHIJ'[len(seen) - 1]}"
            headers = {"Cache-Control": "public, max-age=600", "Vary": vary, "Content-Type": "text/plain"}
            return web.Response(body=b"the same body", headers=headers)

        origin.on_request = hook
        config = replace(make_config(tmp_path / str(fast), [origin.url]), fast_path=fast)
        async with start_edge(config) as edge, asyncio.timeout(30):
            reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
            try:
                writer.write(f"GET /v HTTP/1.1\r\nHost: video.test\r\n{fields}\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"\r\nContent-Length: (\d+)\r\n", head)[1])  # type: ignore[index]
                body = await reader.readexactly(length)
            finally:
                writer.close()
        return re.sub(rb"\r\n(Date|Age): [^\r]*", rb"\r\n\1: -", head) + body, len(seen)

    origin.put("/v", b"")
    before = fast_path_outcomes()
    fast = await answer(fast=True)
    outcomes = {k: v - before[k] for k, v in fast_path_outcomes().items()}
    assert fast == await answer(fast=False)
    reason = b"origin failed: the object kept changing while being fetched, and varying on other fields\n"
    assert fast[0].startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert fast[0].endswith(b"\r\n\r\n" + reason)
    assert fast[1] == 5  # three fills, then the relay, and once more with the fields its answer named (churn.RELAYS)
    assert (outcomes["answered"], outcomes["handed_off"]) == (1, 0)
