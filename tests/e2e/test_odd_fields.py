"""Fields a GET or HEAD rarely carries, answered alike by both paths and as RFC 9110 has them: `Expect: 100-continue`
(no content: the final answer at once, no 100, 10.1.1), `TE` (hop-by-hop, never sent on, 10.1.4), and a HEAD after a
304 on one keep-alive connection (the 200's head, Content-Length and all, no body). Each asked twice, cold then
stored (the 304's object stored before); the fast path's bytes are the framework's (Date and Age aside). Found
alike on both paths, and so not asserted here: a GET pipelined right behind the HEAD whose fill stores the object
is labelled `fwd=partial` or `hit` by how far that fill has got (one origin request either way)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_cache_status import settled
from tests.e2e.test_fast_path import get, get10, normalised
from tests.e2e.test_no_hand_offs import both_paths
from tests.origin import Origin
from tests.wire import exchange

BODY = bytes(range(256)) * 8


def cases(path: str) -> list[bytes]:
    return [
        get(path, "Expect: 100-continue", "Connection: close"),
        get(path, "Expect: 100-continue", "Connection: close", method="HEAD"),
        get10(path, "Expect: 100-continue").replace(b"Connection: keep-alive\r\n", b""),  # ignored in HTTP/1.0
        get(path, "TE: trailers", "Connection: TE, close"),
        get(path, 'If-None-Match: "v1"') + get(path, method="HEAD") + get(path, "Connection: close"),
    ]


async def test_expect_te_and_a_head_after_a_304_are_answered_alike(origin: Origin, tmp_path: Path) -> None:
    async with both_paths(origin, tmp_path) as (fast, framework):
        for n, shape in enumerate(cases("/p")):
            path = f"/p{n}"
            origin.put(path, BODY)
            conditional = b"If-None-Match" in shape
            if conditional:  # stored first, so that the 304 is the node's (not the origin's, passed on)
                for edge in (fast, framework):
                    await exchange(edge.port, get(path, "Connection: close"))
                await settled(fast, framework)
            for _ in range(2):
                request = shape.replace(b" /p ", f" {path} ".encode())
                ours, theirs = await exchange(fast.port, request), await exchange(framework.port, request)
                await settled(fast, framework)  # the cold round's fills written: the next round's are hits alike
                assert await normalised(ours) == await normalised(theirs), request
                assert b" 100 Continue" not in ours, request
                statuses = [line.split(b" ")[1] for line in ours.split(b"\r\n") if line.startswith(b"HTTP/1.")]
                if conditional:
                    assert statuses == [b"304", b"200", b"200"], request
                    assert ours.endswith(b"\r\n\r\n" + BODY)  # the HEAD's answer had no body
                    assert ours.count(BODY) == 1
                else:
                    assert statuses == [b"200"], request
                    assert ours.endswith(b"\r\n\r\n" if request.startswith(b"HEAD") else b"\r\n\r\n" + BODY)
            # One fill per node, whatever the node answered from then on.
            assert [(m.method, m.headers.get("If-None-Match")) for m in origin.seen if m.path == path] == [
                ("GET", None)
            ] * 2, path
    sent = {name.lower() for seen in origin.seen for name in seen.headers}
    assert "host" in sent
    assert not {"te", "expect"} & sent
