"""A forward's answer head is remembered for its object (proxy.relayhead), and each viewer still gets the Date and
Age of the owner's answer in hand, byte for byte, never a remembered one's."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.e2e.test_relay import RING, ScriptedPeer, answers, beside, exchange, fast_path, owned_by, request
from tests.origin import Origin

MOMENTS = [
    ("Sun, 06 Dec 2026 21:22:13 GMT", "0"),
    ("Sun, 06 Dec 2026 21:22:14 GMT", "61"),
    ("Mon, 07 Dec 2026 00:00:00 GMT", "9999"),
]


def owner_answer(date: str, age: str) -> bytes:
    return (
        f'HTTP/1.1 200 OK\r\nEtag: "e1"\r\nContent-Type: text/plain\r\nDate: {date}\r\nServer: owner/1\r\n'
        f"Via: 1.1 edgecache\r\nAge: {age}\r\nCache-Status: edgecache; hit\r\nContent-Length: 3\r\n\r\nabc"
    ).encode()


def relayed(date: str, age: str) -> bytes:
    return (
        f'HTTP/1.1 200 OK\r\nEtag: "e1"\r\nContent-Type: text/plain\r\nDate: {date}\r\nServer: owner/1\r\n'
        f"Age: {age}\r\nContent-Length: 3\r\nVia: 1.1 edgecache, 1.1 edgecache\r\n"
        f'Cache-Status: edgecache; hit, edgecache; fwd=miss; detail="peer"\r\n\r\nabc'
    ).encode()


async def test_each_forward_carries_the_date_and_age_its_owner_sent(origin: Origin, tmp_path: Path) -> None:
    path = owned_by(RING, "node2", "/moment/")
    moments = iter(MOMENTS)

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(owner_answer(*next(moments)))

    async with ScriptedPeer({path: script}) as peer, beside(origin, tmp_path, peer) as edge:
        assert edge.fast is not None
        handed = fast_path("handed_off")
        raw = b""
        for _ in MOMENTS:  # one at a time: each answer is the owner's next
            raw += await exchange(edge.port, request(path, close=True))
        assert [s for s, _, _ in answers(raw, ["GET"] * 3)] == [200] * 3
        heads = raw.split(b"HTTP/1.1 ")[1:]
        assert [b"HTTP/1.1 " + h.replace(b"Connection: close\r\n", b"") for h in heads] == [
            relayed(*m) for m in MOMENTS
        ]
        assert len(edge.fast.decider.forwards.heads.memo) == 1  # one head remembered, its Date and Age holes
        assert peer.seen == [path] * 3
        assert fast_path("handed_off") == handed
