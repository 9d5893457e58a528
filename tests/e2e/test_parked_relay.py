"""What an owner's read of a forwarded answer gives is written to the viewer as the loop's turn ends when it is large
(proxy.relay.flush, proxy.cork.Parked), after what is parked for that viewer already. Held back here (the Cork's
release_parked not run), every piece still reaches the viewer whole and in order before the next answer and before
the close, twice on one connection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgecache.proxy.cork import PARK_BYTES
from tests.e2e.test_relay import ScriptedPeer, answers, beside, exchange, request, scripted
from tests.origin import Origin
from tests.wire import hold_parked


@pytest.fixture
def parked(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    return hold_parked(monkeypatch)


BODY = bytes((i * 11 + i // 241) % 256 for i in range(3 * PARK_BYTES + 12_345))  # several reads of the owner


async def test_a_large_forwarded_answer_held_to_the_turns_end_comes_whole_before_the_next(
    origin: Origin, tmp_path: Path, parked: asyncio.Event
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    scripts, paths = scripted({"large": head + BODY, "small": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"})
    async with ScriptedPeer(scripts) as peer, beside(origin, tmp_path, peer) as edge:
        for _ in range(2):
            parked.clear()
            raw = await exchange(
                edge.port, request(paths["large"]) + request(paths["small"]) + request(paths["large"], close=True)
            )
            assert parked.is_set()
            got = [(status, body) for status, _, body in answers(raw, ["GET"] * 3)]
            assert got == [(200, BODY), (200, b"ok"), (200, BODY)]
        assert peer.seen == [paths["large"], paths["small"], paths["large"]] * 2
