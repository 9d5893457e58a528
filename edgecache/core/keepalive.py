"""What an answer owes its client's HTTP version (RFC 9112 9.3, 6.1, 7.1): whether the connection stays open after
it, what its head says of that, and how a body of unknown length is framed. Decided once per request head
(proxy.decide.Decider) and carried by its decision to whichever writer answers it.

HTTP/1.1 stays open unless either side says `Connection: close`. HTTP/1.0 closes unless the client asked for
`Connection: keep-alive`, which the answer then repeats; and an HTTP/1.0 client knows no chunked coding, so a body
of unknown length is sent as it comes and ended by closing the connection. The status line names the request's
version, as aiohttp's server writes it, so an answer is the same bytes whichever path wrote it.
"""

from __future__ import annotations

import enum


class KeepAlive(enum.Enum):
    OPEN = "HTTP/1.1 open"  # open after the answer
    CLOSE = "HTTP/1.1 close"  # closed after it (`Connection: close` said)
    OPEN_10 = "HTTP/1.0 open"  # asked for keep-alive (and is told it holds)
    CLOSE_10 = "HTTP/1.0 close"  # closed after the answer

    # Plain attributes of each member, set once: asked of every answer up to three times, a property testing
    # membership in a set went through Enum's Python __hash__ each time (0.1-0.2 µs an answer, loadtest.hitcpu).
    persists: bool  # open after the answer
    http10: bool
    protocol: str  # the status line's version
    # The Connection field the answer's head ends with, as aiohttp's server adds it: `close` for HTTP/1.1 when it
    # closes, `keep-alive` for HTTP/1.0 when it stays open, none otherwise (each version's default). Written by
    # every head encoded (a forward's, a pass's): a method comparing members cost 0.18 µs, 0.03 read.
    connection: bytes

    def __init__(self, value: str) -> None:
        self.persists = value.endswith(" open")
        self.http10 = value.startswith("HTTP/1.0 ")
        self.protocol = "HTTP/1.0" if self.http10 else "HTTP/1.1"
        said = self.persists == self.http10  # each version's default said otherwise
        self.connection = b"Connection: %s\r\n" % (b"keep-alive" if self.persists else b"close") if said else b""

    @classmethod
    def of(cls, minor: int, persists: bool) -> KeepAlive:
        """The request's: HTTP/1.`minor`, open after its answer when `persists` (llhttp's should_keep_alive)."""
        if minor == 0:
            return cls.OPEN_10 if persists else cls.CLOSE_10
        return cls.OPEN if persists else cls.CLOSE

    def closed(self) -> KeepAlive:
        """The same version, closed after the answer."""
        return KeepAlive.CLOSE_10 if self.http10 else KeepAlive.CLOSE

    def status_line(self, status: int, reason: str) -> str:
        return f"{self.protocol} {status} {reason}\r\n"

    def unknown_length(self) -> tuple[bool, KeepAlive]:
        """How a body of unknown length is framed: chunked (HTTP/1.1), or ended by the close (HTTP/1.0, so the
        connection does not stay open). Whether it is chunked, and the connection's state after it."""
        if self.http10:
            return False, self.closed()
        return True, self
