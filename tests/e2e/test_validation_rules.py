"""RFC 9111 rules about going to the origin for a stored response, through the real edge: only-if-cached never
does (5.2.1.7), and a 304 updates only the stored response whose validator it carries (4.3.4)."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest
from aiohttp import web

from tests.conftest import Edge
from tests.e2e.test_body_shapes import settle
from tests.origin import Obj, Origin
from tests.wire import fast_path_outcomes


async def test_only_if_cached_with_a_stale_entry_is_a_504_without_the_origin(edge: Edge, origin: Origin) -> None:
    """5.2.1.7: a stored response consistent with the request's constraints, or 504; a stale one must be
    revalidated first, so it is a 504, asked twice, and the origin never hears of it."""
    origin.put("/s", b"body", headers={"Cache-Control": "max-age=100", "Age": "150"})  # stale on arrival
    assert (await edge.get("/s"))[::2] == (200, b"body")
    handed = fast_path_outcomes()["handed_off"]
    for _ in range(2):
        status, _, body = await edge.get("/s", **{"Cache-Control": "only-if-cached"})
        assert (status, body) == (504, b"only-if-cached and not in cache\n")
    assert origin.hits["/s"] == 1
    assert fast_path_outcomes()["handed_off"] == handed  # refused on the fast path (lookup.find_cold)
    # max-stale makes the stale entry consistent with the request: it is served, still without the origin
    status, _, body = await edge.get("/s", **{"Cache-Control": "only-if-cached, max-stale"})
    assert (status, body) == (200, b"body")
    assert origin.hits["/s"] == 1


async def test_a_304_with_another_strong_etag_updates_nothing(edge: Edge, origin: Origin) -> None:
    """4.3.4: "If none of the stored responses contain the same strong validator, then the cache MUST NOT use the
    new response to update any stored responses." Merged, the old bytes went out under the new ETag; the object is
    fetched again instead."""
    origin.put("/d", b"OLD-BODY", headers={"Cache-Control": "max-age=100", "Age": "150"})  # ETag "v1", stale
    assert (await edge.get("/d"))[2] == b"OLD-BODY"
    new = Obj(b"NEW-BODY", etag='"v2"', headers={"Cache-Control": "max-age=100"})

    def now_v2(request: web.BaseRequest, obj: Obj | None) -> Obj | web.Response:
        if request.headers.get("If-None-Match"):  # an origin that answers 304 with its current validator
            return web.Response(status=304, headers={"ETag": '"v2"', "Cache-Control": "max-age=100"})
        return new

    origin.on_request = now_v2
    for _ in range(2):
        status, headers, body = await edge.get("/d")
        assert (status, headers["ETag"], body) == (200, '"v2"', b"NEW-BODY")
    # the revalidation's 304, then the object fetched without validators; the second answer is a hit
    assert origin.hits["/d"] == 3
    assert origin.seen[-1].headers.get("If-None-Match") is None


async def test_star_conditionals_hold_for_a_stored_object_without_an_etag(edge: Edge, origin: Origin) -> None:
    """RFC 9110 13.1.1, 13.1.2: `If-Match: *` is true and `If-None-Match: *` false whenever a current representation
    exists, with an ETag or not. Tied to the stored ETag, they were a 412 and a 200 for an object without one."""
    origin.put("/n", b"no-tag", etag=None)
    assert (await edge.get("/n"))[::2] == (200, b"no-tag")
    for _ in range(2):
        status, headers, body = await edge.get("/n", **{"If-Match": "*"})
        assert (status, headers["Cache-Status"], body) == (200, "edgecache; hit", b"no-tag")
        status, headers, body = await edge.get("/n", **{"If-None-Match": "*"})
        assert (status, headers["Cache-Status"], body) == (304, "edgecache; hit", b"")
        assert "ETag" not in headers
    assert origin.hits["/n"] == 1


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"Cache-Control": "no-store"}, "no-store"),
        ({"Cache-Control": "private, max-age=100"}, "private"),
        ({"Cache-Control": "max-age=100", "Vary": "*"}, "vary-star"),
    ],
)
async def test_a_304_that_forbids_storing_leaves_nothing_stored(
    edge: Edge, origin: Origin, fields: dict[str, str], reason: str
) -> None:
    """RFC 9111 3, 4.3.4: a 304 updates the stored response with its fields. When they make it one a shared cache
    must not store (no-store, private, Vary: *), the copy goes: merged and kept, it was served as a hit to every
    client, under the origin's own `private` or `no-store`. The object is fetched again and served, not stored."""
    origin.put("/p", b"body", headers={"Cache-Control": "max-age=100", "Age": "150"})  # ETag "v1", stale
    assert (await edge.get("/p"))[::2] == (200, b"body")
    origin.objects["/p"].headers = fields  # on its 200s and on its 304s alike
    for _ in range(2):
        status, headers, body = await edge.get("/p")
        assert (status, body) == (200, b"body")
        assert headers["Cache-Status"] == f'edgecache; fwd=uri-miss; detail="{reason}"'
        assert headers["Cache-Control"] == fields["Cache-Control"]
    # the revalidation (304), the object fetched again without validators, then one fetch for the second request
    assert origin.hits["/p"] == 4
    assert [s.headers.get("If-None-Match") for s in origin.seen] == [None, '"v1"', None, None]


async def test_a_304_naming_another_vary_updates_nothing(edge: Edge, origin: Origin) -> None:
    """A stored response is selected by the fields its Vary named when it was stored (RFC 9111 4.1). A 304 that
    names another Vary would leave a copy selected by X-A claiming to vary on X-B, the answer to a request without
    X-B served to every X-B: the copy is not updated, and the object is fetched again under the new Vary."""
    vary = {"now": "X-A"}

    def by_fields(request: web.BaseRequest, obj: Obj | None) -> web.Response:
        a, b = request.headers.get("X-A"), request.headers.get("X-B")
        fields = {"Cache-Control": "max-age=100", "Age": "150", "Vary": vary["now"], "ETag": '"same"'}
        if request.headers.get("If-None-Match") == '"same"':
            return web.Response(status=304, headers=fields)
        return web.Response(body=f"A={a} B={b}".encode(), headers=fields)

    origin.on_request = by_fields
    assert (await edge.get("/v", **{"X-A": "1"}))[2] == b"A=1 B=None"  # stale on arrival (Age 150)
    vary["now"] = "X-B"
    for b in ("1", "9", "9"):
        status, headers, body = await edge.get("/v", **{"X-A": "1", "X-B": b})
        assert (status, headers["Vary"], body) == (200, "X-B", f"A=None B={b}".encode())
    # X-A's 304 (another Vary), X-A's 200 (Vary: X-B), X-B=1's; X-B=9's, then its revalidation (the same Vary)
    asked = [(s.headers.get("x-a"), s.headers.get("x-b"), s.headers.get("If-None-Match")) for s in origin.seen[2:]]
    assert asked == [
        ("1", None, '"same"'),
        ("1", None, None),
        (None, "1", None),
        (None, "9", None),
        (None, "9", '"same"'),
    ]


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        ({"Cache-Control": "no-store"}, "no-store"),  # its 304s say so too: the 304 forbids storing
        ({"ETag": '"v2"', "Cache-Control": "private"}, "private"),  # another version, that may not be stored
    ],
)
async def test_a_background_revalidation_that_keeps_nothing_ends_the_stale_copy(
    edge: Edge, origin: Origin, now: dict[str, str], reason: str
) -> None:
    """stale-while-revalidate (RFC 5861 3) serves the stale copy while it is revalidated. When the revalidation
    shows the origin's answer may not be stored, the copy is no longer one to serve: it stayed, served stale for
    the rest of the window to everyone, each request sending the origin another revalidation. It goes now."""
    origin.put("/w", b"old", headers={"Cache-Control": "max-age=100, stale-while-revalidate=1000", "Age": "150"})
    assert (await edge.get("/w"))[::2] == (200, b"old")
    etag = now.pop("ETag", '"v1"')
    origin.put("/w", b"new", etag=etag, headers=now)
    status, headers, body = await edge.get("/w")
    assert (status, headers["Cache-Status"], body) == (200, 'edgecache; hit; detail="stale"', b"old")
    await settle(edge)  # the background revalidation
    for _ in range(2):
        status, headers, body = await edge.get("/w")
        assert (status, headers["Cache-Status"], body) == (200, f'edgecache; fwd=uri-miss; detail="{reason}"', b"new")
    assert [s.headers.get("If-None-Match") for s in origin.seen] == [None, '"v1"', None, None]


async def test_only_if_cached_never_fetches_the_slices_a_stored_entry_lacks(edge: Edge, origin: Origin) -> None:
    """5.2.1.7: only-if-cached is a stored response or a 504, "without contacting the origin". An entry some of
    whose slices were never fetched answered it as for any request, fetching them (Cache-Status fwd=partial)."""
    data = bytes(range(256)) * (8 * 2**20 // 256) + b"tail"  # eight slices and a bit, of 1 MiB each
    origin.put("/big", data)
    status, _, body = await edge.get("/big", Range="bytes=0-9")  # slice 0 only is fetched
    assert (status, body) == (206, data[:10])
    only = {"Cache-Control": "only-if-cached"}
    for _ in range(2):
        status, headers, body = await edge.get("/big", Range="bytes=5-14", **only)
        assert (status, headers["Cache-Status"], body) == (206, "edgecache; hit", data[5:15])
        costly = ",".join(f"{i * 2**20}-{i * 2**20}" for i in range(1, 8))  # a multipart Range passed through
        for rng in ("bytes=2097152-2097161", "bytes=0-9,2097152-2097161", f"bytes={costly}", None):
            fields = {**only, "Range": rng} if rng else only
            status, headers, body = await edge.get("/big", **fields)
            assert (status, body) == (504, b"only-if-cached and not in cache\n"), rng
    assert origin.range_hits("/big") == ["bytes=0-1048575"]


async def test_a_stored_copy_without_validators_that_lacks_a_slice_is_fetched_whole_not_cut(
    edge: Edge, origin: Origin
) -> None:
    """An object with no validator, its first slice stored by a range request: the next whole GET was started
    from that copy on aiohttp's handler (200, Content-Length 2 MiB) and cut after its first 1 MiB, since the fill
    of the slice it lacked is a copy of its own (no version names them one: fillhead._copy). Such a copy is never
    completed: before any byte is sent it goes, and the object is fetched whole, as on the fast path."""
    size = 2**20
    origin.put("/nv", b"a" * 2 * size, etag=None, last_modified=None, headers={"Cache-Control": "max-age=3600"})
    status, _, body = await edge.get("/nv", Range="bytes=0-9")
    assert (status, body) == (206, b"a" * 10)
    origin.put("/nv", b"b" * 2 * size, etag=None, last_modified=None, headers={"Cache-Control": "max-age=3600"})
    for _ in range(2):  # the new bytes, whole, then stored
        status, _, body = await edge.get("/nv")
        assert (status, len(body), body == b"b" * 2 * size) == (200, 2 * size, True)
    assert origin.range_hits("/nv") == ["bytes=0-1048575", None]


async def test_slices_of_an_object_whose_only_validator_is_a_recent_last_modified_are_never_combined(
    edge: Edge, origin: Origin
) -> None:
    """RFC 9110 15.3.7.3 and 8.8.2.2: parts are combined only under a strong validator, and a Last-Modified a few
    seconds before the answer's Date is not one (the origin may change the bytes again within that second). A
    copy of such an object with its first slice stored took its second slice from an origin that had rewritten it
    since (no ETag, the same Last-Modified and length): one 200 of 1 MiB of the old bytes and 1 MiB of the new."""
    size = 2**20
    recent = formatdate(time.time() - 5, usegmt=True)
    fields = {"Cache-Control": "public, max-age=3600"}
    origin.put("/live", b"a" * 2 * size, etag=None, last_modified=recent, headers=fields)
    status, _, body = await edge.get("/live", Range="bytes=0-9")
    assert (status, body) == (206, b"a" * 10)
    origin.put("/live", b"b" * 2 * size, etag=None, last_modified=recent, headers=fields)
    for _ in range(2):  # the new bytes, whole (fetched in one request), then stored
        status, _, body = await edge.get("/live")
        assert (status, len(body), body == b"b" * 2 * size) == (200, 2 * size, True)
    assert origin.range_hits("/live") == ["bytes=0-1048575", None]
