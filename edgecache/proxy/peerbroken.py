"""How an exchange with a peer failed (proxy.peerpool, proxy.relay)."""

from __future__ import annotations


class PeerBroken(Exception):
    """The exchange failed: `timeout` (no connection within connect_timeout, or no byte for read_timeout),
    `connect` (refused: nothing was sent), or the connection broke or spoke nonsense."""

    def __init__(
        self, reason: str, timeout: bool = False, connect: bool = False, behind: bool = False, busy: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timeout = timeout
        self.connect = connect  # the peer could not be reached at all: nothing was sent
        self.behind = behind  # sent behind another request whose answer failed or stalled: its own had not begun
        self.busy = busy  # too many forwards to this peer wait already (WAITING): nothing was sent


class Malformed(PeerBroken):
    """The peer's answer is one llhttp refuses, or went past a bound (proxy.answerbound); counted as kind
    "malformed", as the full handler's client counts an answer its parser refuses (proxy.nohead). Before its head
    ended, the peer is broken (marked down, the next owner asked); after, the viewer's connection is cut. Never sent
    again on a new connection as a stale pooled one's request is: it did answer."""
