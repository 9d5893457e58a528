"""What receives a peer's answer to one forwarded request (proxy.peerpool sends, proxy.relay receives): the
protocol, and the stand-in that reads an answer nobody takes any more to its end."""

from __future__ import annotations

from typing import Protocol

from edgecache.proxy.peerbroken import PeerBroken


class Exchange(Protocol):
    """What receives one response (proxy.relay): its head, its body's pieces, its end, or its failure."""

    def head(self, status: int, reason: str, fields: list[tuple[bytes, bytes]]) -> None: ...
    def body(self, piece: bytes) -> None: ...
    def done(self, keep: bool) -> None: ...
    def failed(self, error: PeerBroken, before_head: bool) -> None: ...
    def flush(self) -> None: ...


class Dropped:
    """Stands in for a request sent whose answer nobody takes any more (its viewer left, or it was sent again on
    another connection): the answer is read to its end and dropped, and the connection goes on."""

    def head(self, status: int, reason: str, fields: list[tuple[bytes, bytes]]) -> None:
        pass

    def body(self, piece: bytes) -> None:
        pass

    def done(self, keep: bool) -> None:
        pass

    def failed(self, error: PeerBroken, before_head: bool) -> None:
        pass

    def flush(self) -> None:
        pass


DROPPED = Dropped()
