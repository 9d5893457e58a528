"""An exception nobody expected, raised before any byte of an answer went out, gets the viewer a 500 that says so
(Cache-Status and a one-line body) at once, counted as the node's own error answers are; and the node goes on
serving. Never a connection dropped with no answer (the fast path's), nor aiohttp's bare 500 counted as no answer.

The fault is injected: a storage method of the real in-process node is replaced by one that raises TypeError, the
kind of bug a draft once left in a read path (it hung a viewer 20 s). Nothing a real disk or origin does here makes
a storage call raise something other than what the code handles, which is the point: it stands for a bug.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from edgecache.metricturn import apply
from edgecache.proxy import diskhit
from tests.conftest import Edge, make_config, start_edge
from tests.origin import Origin
from tests.samples import applied
from tests.wire import exchange, own_error

MiB = 2**20
DATA = bytes(range(256)) * (3 * MiB // 256)
ERROR_STATUS = 'edgecache; detail="internal error (TypeError)"'


def errors() -> float:
    """edgecache_requests_total's 5xx answers of the node's own (cache_status error), every site and method."""
    apply()
    total = 0.0
    for metric in applied().restricted_registry(["edgecache_requests_total"]).collect():
        for s in metric.samples:
            if s.name == "edgecache_requests_total" and s.labels.get("status_class") == "5xx":
                total += s.value if s.labels.get("cache_status") == "error" else 0.0
    return total


def broken(monkeypatch: pytest.MonkeyPatch, edge: Edge, method: str) -> None:
    def raising(*args: object, **kwargs: object) -> None:
        raise TypeError("injected: a bug in a storage call")

    monkeypatch.setattr(edge.node.store, method, raising)


async def on_disk(edge: Edge) -> None:
    """/v stored, on the disk tier only."""
    assert (await answered(edge, "/v"))[::2] == (200, DATA)
    await edge.node.engine.flush()
    edge.node.store.memory.clear()


async def answered(edge: Edge, path: str, **headers: str) -> tuple[int, str | None, bytes]:
    """The status, Cache-Status and body; a connection closed with no answer raises (ServerDisconnectedError)."""
    async with edge.session.get(edge.url + path, headers={"Host": "video.test", **headers}) as r:
        return r.status, r.headers.get("Cache-Status"), await r.read()


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize(
    ("state", "method", "rng"),
    [
        ("cold", "get_meta", None),  # the fast path's lookup off the loop (_load); the full handler's look-up
        ("cold", "get_record", "bytes=100-200"),
        ("on disk", "slice_from_memory", None),  # the decision itself (the fast path's Cork.around)
        ("on disk", "slice_from_memory", "bytes=0-1,2000000-2000010"),
    ],
)
async def test_an_exception_before_the_head_is_a_500_that_says_so(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast: bool, state: str, method: str, rng: str
) -> None:
    async with start_edge(replace(make_config(tmp_path / "c", [origin.url]), fast_path=fast)) as edge:
        origin.put("/v", DATA)
        asked = {"Range": rng} if rng else {}
        if state == "on disk":
            await on_disk(edge)
        counted = errors()
        with monkeypatch.context() as patch:
            broken(patch, edge, method)
            got = await answered(edge, "/v", **asked)
        assert got == (500, ERROR_STATUS, b"internal error (TypeError)\n")
        assert errors() == counted + 1
        status, _, body = await answered(edge, "/v")  # the node goes on, the store as it was
        assert (status, body) == (200, DATA)
        assert origin.hits["/v"] == 1


@pytest.mark.parametrize("fast", [True, False])
async def test_the_500_closes_its_connection_and_answers_nothing_pipelined_behind_it(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    """The request after it on the connection is not answered: what raised may have left the connection's state
    anything, and the fast path closes after its 500 (refuse.failed). The full handler's 500 kept the connection
    open and answered the next request on it: no Connection: close, so the two paths' bytes differed too."""
    async with start_edge(replace(make_config(tmp_path / "c", [origin.url]), fast_path=fast)) as edge:
        origin.put("/v", DATA)
        origin.put("/next", b"next object")
        real, calls = edge.node.store.get_meta, []

        async def first_broken(*args: object, **kwargs: object) -> object:
            calls.append(args)
            if len(calls) == 1:
                raise TypeError("injected: a bug in a storage call")
            return await real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(edge.node.store, "get_meta", first_broken)
        ask = b"GET /v HTTP/1.1\r\nHost: video.test\r\n\r\nGET /next HTTP/1.1\r\nHost: video.test\r\n\r\n"
        got = await exchange(edge.port, ask, seconds=5)  # to the close
        assert got == own_error(got, 500, "internal error (TypeError)")
        assert (origin.hits["/v"], origin.hits["/next"]) == (0, 0)


@pytest.mark.parametrize("method", ["open_slice", "open_file", "missing"])
async def test_a_fast_path_task_that_fails_before_its_head_answers_500(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """A hit read from disk (diskhit's task) or a multipart answer (multipart's) raising before it writes its head;
    one that has written it cuts the connection (the answer's length was told)."""
    async with start_edge(make_config(tmp_path / "c", [origin.url])) as edge:
        origin.put("/v", DATA)
        await on_disk(edge)  # read by a task
        asked = {"Range": "bytes=0-1,2000000-2000010"} if method == "missing" else {}
        counted = errors()
        with monkeypatch.context() as patch:
            broken(patch, edge, method)
            got = await answered(edge, "/v", **asked)
        assert got == (500, ERROR_STATUS, b"internal error (TypeError)\n")
        assert errors() == counted + 1
        status, _, body = await answered(edge, "/v")
        assert (status, body) == (200, DATA)
        assert origin.hits["/v"] == 1


async def test_a_failure_after_the_head_cuts_the_connection(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path's disk read failing once the head is out: the answer is cut, never ended as if whole, and no
    500 follows it on the connection."""
    async with start_edge(make_config(tmp_path / "c", [origin.url])) as edge:
        origin.put("/v", DATA)
        await on_disk(edge)

        async def paced(conn: object) -> None:  # awaited after each slice written (the head is out by then)
            raise TypeError("injected: a bug after the head")

        counted = errors()
        monkeypatch.setattr(diskhit, "pace", paced)
        async with edge.session.get(edge.url + "/v", headers={"Host": "video.test"}) as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        assert errors() == counted
