"""A stored object whose origin has moved to a new version while some of its slices were never fetched: a request
for such a slice finds the new version at the origin. Slices of two versions are never mixed, and the viewer is
not answered 502 either: the old entry is dropped and the request is served as a miss of the new version."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import replace
from email.utils import formatdate
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import Edge, make_config, start_edge
from tests.origin import Obj, Origin
from tests.wire import fast_path_outcomes

MiB = 2**20
V1 = bytes((i * 3) % 251 for i in range(3 * MiB + 100))
V2 = bytes((i * 5 + 1) % 253 for i in range(3 * MiB + 100))


@pytest.mark.parametrize("edge", ["fast", "framework"], indirect=True)
async def test_a_missing_slice_of_a_changed_object_is_served_from_the_new_version(edge: Edge, origin: Origin) -> None:
    origin.put("/moved.bin", V1)
    status, _, body = await edge.get("/moved.bin", Range="bytes=0-99")  # slice 0 of v1 only
    assert (status, body) == (206, V1[:100])
    await edge.node.engine.flush()
    origin.put("/moved.bin", V2, etag='"v2"', last_modified="Sun, 02 Nov 2025 00:00:00 GMT")
    before = fast_path_outcomes()["handed_off"]
    for _ in range(2):
        status, headers, body = await edge.get("/moved.bin", Range="bytes=2097152-2097251")  # slice 2
        assert (status, body) == (206, V2[2 * MiB : 2 * MiB + 100])
        assert headers["ETag"] == '"v2"'
    status, headers, body = await edge.get("/moved.bin", Range="bytes=0-99")  # v1's slice 0 is not served again
    assert (status, body, headers["ETag"]) == (206, V2[:100], '"v2"')
    assert fast_path_outcomes()["handed_off"] == before  # started again as a miss on the fast path


@pytest.mark.parametrize("edge", ["fast", "framework"], indirect=True)
async def test_a_changed_weak_etag_is_a_new_version_though_last_modified_and_length_are_not(
    edge: Edge, origin: Origin
) -> None:
    """An origin that rewrites an object within the same second: only its weak ETag tells the two versions apart.
    The copy's slices are then never combined with the new version's (RFC 9111 3.4)."""
    same = "Sat, 01 Nov 2025 00:00:00 GMT"
    new = bytes(reversed(V1))  # the same length
    origin.put("/weak.bin", V1, etag='W/"one"', last_modified=same)
    status, _, body = await edge.get("/weak.bin", Range="bytes=0-99")  # slice 0 of v1 only
    assert (status, body) == (206, V1[:100])
    await edge.node.engine.flush()
    origin.put("/weak.bin", new, etag='W/"two"', last_modified=same)
    status, headers, body = await edge.get("/weak.bin", Range="bytes=2097152-2097251")  # slice 2, of v2
    assert (status, body, headers["ETag"]) == (206, new[2 * MiB : 2 * MiB + 100], 'W/"two"')
    for _ in range(2):  # the whole object, then from the cache: v2's bytes alone
        status, headers, body = await edge.get("/weak.bin")
        assert (status, headers["ETag"]) == (200, 'W/"two"')
        assert body == new


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
@pytest.mark.parametrize("grows", [True, False], ids=["longer", "shorter"])
async def test_the_same_strong_etag_with_another_length_is_another_copy(
    origin: Origin, tmp_path: Path, fast: bool, grows: bool
) -> None:
    """An origin that reused a strong ETag for new bytes of another size: the slices stored under it are never
    combined with the new ones. They were: the whole object came back as the old slices 0 and 2 around the new
    slice 1, cut short or padded out to the new length, as a hit, for the whole max-age."""
    old, new = (V1[: 2 * MiB + 500_000], V2) if grows else (V2, V1[: 2 * MiB + 500_000])
    origin.put("/sized.bin", old, etag='"same"')
    config = replace(make_config(tmp_path / "c", [origin.url], fill_slices=1), fast_path=fast)
    async with start_edge(config) as edge:
        for first in (0, 2 * MiB):  # slices 0 and 2 of the old bytes
            status, _, body = await edge.get("/sized.bin", Range=f"bytes={first}-{first + 9}")
            assert (status, body) == (206, old[first : first + 10])
        origin.put("/sized.bin", new, etag='"same"')
        status, headers, body = await edge.get("/sized.bin", Range=f"bytes={MiB}-{MiB + 9}")  # slice 1, new
        assert (status, body, headers["Content-Range"]) == (
            206,
            new[MiB : MiB + 10],
            f"bytes {MiB}-{MiB + 9}/{len(new)}",
        )
        for _ in range(2):
            status, headers, body = await edge.get("/sized.bin")
            assert (status, int(headers["Content-Length"])) == (200, len(new))
            assert body == new


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_the_same_strong_etag_with_another_last_modified_is_another_copy(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """An origin that reused a strong ETag for new bytes of the same size, with a new Last-Modified: the validators
    of the stored slices and of the new one disagree, so they are never combined. They were: the whole object came
    back as the old slices 0 and 2 around the new slice 1, as a hit, for the whole max-age."""
    new = bytes(reversed(V1))  # the same length
    origin.put("/dated.bin", V1, etag='"same"')
    config = replace(make_config(tmp_path / "c", [origin.url], fill_slices=1), fast_path=fast)
    async with start_edge(config) as edge:
        for first in (0, 2 * MiB):  # slices 0 and 2 of the old bytes
            status, _, body = await edge.get("/dated.bin", Range=f"bytes={first}-{first + 9}")
            assert (status, body) == (206, V1[first : first + 10])
        origin.put("/dated.bin", new, etag='"same"', last_modified="Sun, 02 Nov 2025 00:00:00 GMT")
        status, headers, body = await edge.get("/dated.bin", Range=f"bytes={MiB}-{MiB + 9}")  # slice 1, new
        assert (status, body, headers["Last-Modified"]) == (206, new[MiB : MiB + 10], "Sun, 02 Nov 2025 00:00:00 GMT")
        for _ in range(2):
            status, headers, body = await edge.get("/dated.bin")
            assert (status, headers["Last-Modified"]) == (200, "Sun, 02 Nov 2025 00:00:00 GMT")
            assert body == new


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_last_modified_dated_with_every_answer_is_no_new_copy(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """An origin that dates every answer (Last-Modified = Date) with the same strong ETag: that Last-Modified is not
    strong (RFC 9110 8.8.2.2) and tells nothing of the bytes, so the slices it brings are the stored copy's. Taken as
    a new copy, every request of the whole object was cut at the first slice fetched for it, for ever."""
    origin.put("/dated-now.bin", V1, etag='"same"')

    answers = itertools.count()

    def date_it(_request: object, obj: Obj | None) -> Obj | None:
        if obj is not None:  # another second for every answer, as a slow origin's clock would give
            now = formatdate(time.time() + next(answers), usegmt=True)
            obj.last_modified = now
            obj.headers = {**obj.headers, "Date": now}
        return obj

    origin.on_request = date_it
    config = replace(make_config(tmp_path / "c", [origin.url], fill_slices=1), fast_path=fast)
    async with start_edge(config) as edge:
        for first in (0, 2 * MiB):  # slices 0 and 2
            status, _, body = await edge.get("/dated-now.bin", Range=f"bytes={first}-{first + 9}")
            assert (status, body) == (206, V1[first : first + 10])
        for _ in range(2):
            status, _, body = await edge.get("/dated-now.bin")
            assert status == 200
            assert body == V1
    assert origin.range_hits("/dated-now.bin")[2:] == [f"bytes={MiB}-{2 * MiB - 1}", f"bytes={3 * MiB}-{4 * MiB - 1}"]


@pytest.mark.parametrize("asked", ["bytes=100-1048675", "bytes=0-9,1048576-1048585"], ids=["single", "multipart"])
@pytest.mark.parametrize("edge", ["fast", "framework"], indirect=True)
async def test_a_range_over_a_stored_slice_and_a_changed_one_is_the_new_version_not_cut(
    edge: Edge, origin: Origin, asked: str
) -> None:
    """A fresh copy holds slice 0 of v1; the origin has v2 now; a Range needs slice 0 and slice 1. The head and the
    stored slice 0 went out before slice 1's fill met v2, and the answer was cut there (a short body, the client's
    to retry), on the full handler and for a multipart Range on either path; only the fast path's single range read
    the slice it fetches first. Each reads it before its head now, and answers v2 whole. Found by fuzzing."""
    origin.put("/cut.bin", V1)
    status, _, body = await edge.get("/cut.bin", Range="bytes=0-99")  # slice 0 of v1 only
    assert (status, body) == (206, V1[:100])
    await edge.node.engine.flush()
    origin.put("/cut.bin", V2, etag='"v2"', last_modified="Sun, 02 Nov 2025 00:00:00 GMT")
    for _ in range(2):
        status, headers, body = await edge.get("/cut.bin", Range=asked)
        assert (status, headers["ETag"]) == (206, '"v2"')
        if asked.startswith("bytes=100-"):
            assert (headers["Content-Range"], body) == (f"bytes 100-1048675/{len(V2)}", V2[100:1048676])
        else:
            assert V2[:10] in body
            assert V2[MiB : MiB + 10] in body
            assert V1[:10] not in body


@pytest.mark.parametrize("edge", ["fast", "framework"], indirect=True)
async def test_a_stale_copy_whose_origin_now_has_an_empty_object_is_replaced_not_passed_through_for_good(
    edge: Edge, origin: Origin
) -> None:
    """The revalidation of a stale copy asks for its slice 0 with its ETag; the object is empty now, and the origin
    answers 416 (bytes */0). That 416 was passed through and the copy kept: every later request sent the same
    revalidation and then the request itself, two origin requests each, and the empty object was never stored.
    Found by fuzzing version changes."""
    origin.put("/empty.bin", V1, headers={"Cache-Control": "max-age=0"})
    status, _, body = await edge.get("/empty.bin", Range="bytes=0-99")  # slice 0 of v1, stale at once
    assert (status, body) == (206, V1[:100])
    await edge.node.engine.flush()
    origin.put("/empty.bin", b"", etag='"v2"', headers={"Cache-Control": "max-age=0"})
    for _ in range(2):
        status, headers, body = await edge.get("/empty.bin")
        assert (status, headers["ETag"], body) == (200, '"v2"', b"")
    asked = [(s.headers.get("Range"), s.headers.get("If-None-Match")) for s in origin.seen if s.path == "/empty.bin"]
    assert asked[:3] == [("bytes=0-1048575", None), ("bytes=0-1048575", '"v1"'), (None, None)]
    assert [inm for _, inm in asked[3:]] == ['"v2"']  # the empty copy revalidated: a 304


@pytest.mark.parametrize("edge", ["fast", "framework"], indirect=True)
async def test_a_416_to_a_slice_of_a_copy_replaced_meanwhile_starts_the_request_again(
    edge: Edge, origin: Origin
) -> None:
    """A fresh copy holds slice 0 of v1 (3 slices); a Range in slice 1 is at the origin when the object shrinks to
    less than a slice and a no-cache request stores the new copy. Slice 1's answer is a 416 (bytes */N), which
    tells of that new copy, not of a failing origin: the request answered 502 '416 to the range a fill asked
    for' (reading._disagreed saw another copy stored and raised the 416 as it came). It starts again with the
    stored copy now, and answers its 416 without asking the origin again. Found by python -m loadtest.fuzz
    --target e2e."""
    v1, v2 = V1[: 2 * MiB + 207], V2[: MiB - 1]
    origin.put("/shrunk.bin", v1, etag=None)  # Last-Modified only: each answer is checked against the stored copy
    status, _, body = await edge.get("/shrunk.bin", Range="bytes=0-99")
    assert (status, body) == (206, v1[:100])
    await edge.node.engine.flush()
    held, release = asyncio.Event(), asyncio.Event()

    async def hold_slice_1(request: web.BaseRequest, obj: Obj | None) -> Obj:
        if request.headers.get("Range", "").startswith(f"bytes={MiB}-") and not held.is_set():
            held.set()
            await release.wait()
        return origin.objects["/shrunk.bin"]  # what the origin has when it answers

    origin.on_request = hold_slice_1
    ranged = asyncio.ensure_future(edge.get("/shrunk.bin", Range=f"bytes={MiB}-{MiB + 99}"))
    await asyncio.wait_for(held.wait(), 10)
    origin.put("/shrunk.bin", v2, etag=None, last_modified="Sun, 02 Nov 2025 00:00:00 GMT")
    status, _, body = await edge.get("/shrunk.bin", Range="bytes=0-99", **{"Cache-Control": "no-cache"})
    assert (status, body) == (206, v2[:100])  # the new copy, stored
    await edge.node.engine.flush()
    release.set()
    status, headers, body = await ranged
    assert (status, headers["Content-Range"]) == (416, f"bytes */{len(v2)}")
    assert origin.range_hits("/shrunk.bin") == ["bytes=0-1048575", "bytes=1048576-2097151", "bytes=0-1048575"]


@pytest.mark.parametrize("edge", ["fast", "framework"], indirect=True)
@pytest.mark.parametrize("store", [True, False], ids=["stored", "no-store"])
async def test_a_varying_416_to_a_slice_of_a_copy_tells_a_new_version(edge: Edge, origin: Origin, store: bool) -> None:
    """A copy of a Vary'd object holds slice 0; the object is now empty, Vary'd still, and slice 1's fill gets a 416
    (bytes */0) that carries Vary. The fill sent the Vary'd field as the copy's key has it, so that 416 tells the
    length of the copy's variant: a new version, and the request starts again. It told none (a 416 with Vary): the
    copy was taken for an origin whose ranges disagree, marked to be fetched whole, and the next slice's 416 was the
    client's 502 '416 to the range a fill asked for'. Found by python -m loadtest.fuzz --target e2e."""
    varying = {"Cache-Control": "public, max-age=3600", "Vary": "Accept-Encoding"}
    origin.put("/gone.bin", V1, headers=varying)
    status, _, body = await edge.get("/gone.bin", Range="bytes=0-99", **{"Accept-Encoding": "gzip"})
    assert (status, body) == (206, V1[:100])
    await edge.node.engine.flush()
    control = "public, max-age=3600" if store else "no-store"
    origin.put("/gone.bin", b"", etag='"v2"', headers={"Cache-Control": control, "Vary": "Accept-Encoding"})
    status, headers, body = await edge.get("/gone.bin", Range=f"bytes={MiB}-{MiB + 99}", **{"Accept-Encoding": "gzip"})
    assert (status, headers["Content-Range"], headers["Cache-Status"]) == (416, "bytes */0", "edgecache; fwd=uri-miss")
    status, headers, body = await edge.get("/gone.bin", **{"Accept-Encoding": "gzip"})
    assert (status, headers["ETag"], body) == (200, '"v2"', b"")
    slice_0, slice_1 = "bytes=0-1048575", "bytes=1048576-2097151"
    # Slice 0 without the field, then with it (the answer Varies); slice 1 for the copy: the 416 of a new version;
    # slice 1 for the miss: the same 416, which tells the client nothing (it might name another variant), so the
    # client's Range is passed; the whole object.
    assert origin.range_hits("/gone.bin") == [slice_0, slice_0, slice_1, slice_1, f"bytes={MiB}-{MiB + 99}", None]


@pytest.mark.parametrize("edge", ["fast", "framework"], indirect=True)
async def test_a_416_without_vary_to_a_slice_of_a_varying_copy_tells_a_new_version(
    edge: Edge, origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    """A copy of a Vary'd object holds slice 0; the object is now one byte and Varies no more. Slice 2's fill (with
    the copy's Accept-Encoding) gets a 416 (bytes */1) without Vary: the key that names holds no copy, so that 416
    was compared with none, taken for an origin whose ranges disagree, and the copy marked to be fetched whole
    (whose next revalidation by range the client was answered 502 '416 to the range a fill asked for'). It tells
    another length than the copy's the fill asked for: a new version. Found by python -m loadtest.fuzz_e2e (excl)."""
    varying = {"Cache-Control": "public, max-age=3600", "Vary": "Accept-Encoding"}
    origin.put("/unvaried.bin", V1, headers=varying)
    status, _, body = await edge.get("/unvaried.bin", Range="bytes=0-99", **{"Accept-Encoding": "br"})
    assert (status, body) == (206, V1[:100])
    await edge.node.engine.flush()
    origin.put("/unvaried.bin", b"x", etag='"v2"')
    status, headers, body = await edge.get(
        "/unvaried.bin", Range=f"bytes={2 * MiB}-{2 * MiB + 99}", **{"Accept-Encoding": "br"}
    )
    assert (status, headers["Content-Range"]) == (416, "bytes */1")
    status, headers, body = await edge.get("/unvaried.bin", **{"Accept-Encoding": "br"})
    assert (status, headers["ETag"], body) == (200, '"v2"', b"x")
    assert not [r for r in caplog.records if "disagree" in r.getMessage()]
    # Slice 0 without the field, then with it; slice 2 for the copy: the 416 of a new version; slice 2 for the
    # miss: the same 416, whose length answers the client's range; the whole object.
    slice_0, slice_2 = "bytes=0-1048575", "bytes=2097152-3145727"
    assert origin.range_hits("/unvaried.bin") == [slice_0, slice_0, slice_2, slice_2, None]
