"""An origin's head a node could not pass on to a peer is refused where it is read (proxy.answerbound.origin_head),
with a 502 every node gives alike: the owner of an object whose origin answered with 123 fields stored and served
it, and each node that forwarded a request for it met an answer over its peer bounds (the owner's own fields
added: 128 at most) and marked the owner down, for every object, on both paths; a node that stood in then served it
(origin hits, copies off their owner). A 3-node cluster, a raw origin, requests through a node that does not own the
object; a head within the bounds is served as before."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.proxy import answerbound
from tests.e2e.test_cluster import cluster_configs, owner_of, started
from tests.e2e.test_fast_path import get
from tests.origin import RawOrigin, RawReply, RawRequest
from tests.wire import exchange

BODY = b"0123456789" * 10
MOST = answerbound.MAX_FIELDS - answerbound.NODE_FIELDS  # the origin's fields a node takes: 112


def extra(path: str) -> bytes:
    """/over/*: 123 fields in all; /within/*: the most a node takes; /big/*: 20 fields of 3,000 bytes (60,180 bytes
    in all); any other path: 2 fields."""
    if path.startswith("/over/"):
        return b"".join(b"X-F%d: %d\r\n" % (i, i) for i in range(121))
    if path.startswith("/within/"):
        return b"".join(b"X-F%d: %d\r\n" % (i, i) for i in range(MOST - 2))
    if path.startswith("/big/"):
        return b"".join(b"X-B%d: %s\r\n" % (i, b"b" * 3000) for i in range(20))
    return b""


def reply(request: RawRequest) -> RawReply:
    head = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\n" + extra(request.path)
    return head + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY, False


@pytest.mark.parametrize("fast", [True, False])
async def test_an_origin_head_over_the_peer_bounds_is_a_502_on_every_node(tmp_path: Path, fast: bool) -> None:
    origin = RawOrigin(reply)
    await origin.start()
    try:
        configs = [replace(c, fast_path=fast) for c in cluster_configs(origin, tmp_path)]  # type: ignore[arg-type]
        over, big, within, plain = (
            next(p for p in (f"/{kind}/{i}" for i in range(100)) if owner_of(configs, p) == "node2")
            for kind in ("over", "big", "within", "x")
        )
        async with started(configs) as nodes:
            for path in (over, big):
                for node in (nodes[0], nodes[1], nodes[0]):  # a forward, the owner, a forward again
                    answer = await exchange(node.port, get(path, "Connection: close"))
                    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), answer[:300]
                    assert b"a node passes on" in answer, answer[-300:]
                assert origin.hits[path] == 3, path  # never stored, asked each time, by the owner only
            for path in (within, plain):
                for node in (nodes[0], nodes[1], nodes[0]):
                    answer = await exchange(node.port, get(path, "Connection: close"))
                    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:300]
                    assert answer.endswith(b"\r\n\r\n" + BODY)
                assert origin.hits[path] == 1, path  # stored on its owner, forwarded to it: the owner was never down
            assert len(origin.hits) == 4
    finally:
        await origin.stop()
