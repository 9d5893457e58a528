"""A client's If-None-Match, If-Match or If-Range that is not an entity-tag (RFC 9110 8.8.3) gets, on either path, no
304, 412 or part from the cache: the whole object, 200 (core.conditional's rule). An unquoted `If-None-Match: e1`
was answered 304 against a stored `ETag: "e1"`, where the origin answers 200; `If-Match: e1` got a 412."""

from __future__ import annotations

from tests.conftest import Edge
from tests.origin import Origin

BODY = bytes(range(256)) * 40
RANGE = {"Range": "bytes=0-9"}

# (fields, status, body) against the stored `ETag: "e1"`, each asked twice (the second from what the first left)
CASES: list[tuple[dict[str, str], int, bytes]] = [
    ({"If-None-Match": "e1"}, 200, BODY),
    ({"If-None-Match": "e1", **RANGE}, 200, BODY),  # no part either: the whole object
    ({"If-None-Match": "e1, e2"}, 200, BODY),
    ({"If-Match": "e1"}, 200, BODY),  # not a 412
    ({"If-Match": "e1", **RANGE}, 200, BODY),
    ({"If-Range": "e1", **RANGE}, 200, BODY),  # an If-Range that is neither a tag nor a date: the whole object
    ({"If-Range": 'W/"e1"', **RANGE}, 200, BODY),  # a weak tag never allows a part (13.1.5)
    # Well formed: as before.
    ({"If-None-Match": '"e1"'}, 304, b""),
    ({"If-None-Match": 'W/"e1"', **RANGE}, 304, b""),
    ({"If-None-Match": '"e2"', **RANGE}, 206, BODY[:10]),
    ({"If-Match": '"e1"', **RANGE}, 206, BODY[:10]),
    ({"If-Match": '"e2"'}, 412, b"precondition failed\n"),
    ({"If-Range": '"e1"', **RANGE}, 206, BODY[:10]),
]


async def test_a_malformed_conditional_gets_the_whole_object(edge: Edge, origin: Origin) -> None:
    origin.put("/obj", BODY, etag='"e1"')
    assert (await edge.get("/obj"))[0] == 200
    for fields, status, body in CASES:
        for _ in range(2):
            got_status, headers, got = await edge.get("/obj", **fields)
            assert (got_status, got) == (status, body), fields
            assert headers["Cache-Status"] == "edgecache; hit", fields
    assert origin.hits["/obj"] == 1


async def test_an_origins_unquoted_etag_matches_itself_only(edge: Edge, origin: Origin) -> None:
    """An origin's `ETag: abc` (no entity-tag either), echoed by a browser as it is, is still a 304 (nginx and Fastly
    compare tags as they are); its quoted form names another tag."""
    origin.put("/bare", BODY, etag="abc")
    assert (await edge.get("/bare"))[0] == 200
    for fields, status, body in [
        ({"If-None-Match": "abc"}, 304, b""),
        ({"If-None-Match": '"abc"'}, 200, BODY),
        ({"If-Match": "abc", **RANGE}, 206, BODY[:10]),
        ({"If-Match": "abd"}, 200, BODY),
    ]:
        for _ in range(2):
            got_status, _, got = await edge.get("/bare", **fields)
            assert (got_status, got) == (status, body), fields
    assert origin.hits["/bare"] == 1
