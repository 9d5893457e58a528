"""Bounds on a peer's answer as the fast path reads it (proxy.peerpool): those aiohttp's parser holds a viewer's
request to, which are also those the full handler's client holds a peer's answer to (the same defaults, read from
aiohttp: headparse.LIMITS). llhttp itself bounds none of them: a peer that is broken or hostile could send a
chunk-size line, its extensions or a trailer section without end, or fields without number, and each would hold
its connection (and, for fields, memory) for as long as the bytes came.

The status line, each field (of the head or the trailers) and the fields of both together are bounded as aiohttp
bounds them. llhttp tells nothing of a chunk-size line, its extensions or a trailer until it ends, so what bounds
them is the bytes read since an element of the answer last ended (a field, the head, body bytes, the answer): at
most a line's worth, counted by whole reads (one read more, as peerpool.MAX_HEAD is). Past a bound the answer is
broken (peerbroken.Malformed), the peer's connection closed and the failure counted as the peer's, kind
"malformed". Before the head ended, nothing reached the viewer: the peer is marked down and the next owner
answers (this node standing in), as for a head past peerpool.MAX_HEAD or one llhttp refuses. After, the viewer
gets a 502 if no byte of the answer reached it yet, else its connection is cut, as for any answer broken
mid-body: never a truncated body taken for whole.
"""

from __future__ import annotations

from edgecache.proxy.headparse import LIMITS

MAX_LINE = LIMITS["max_line_size"]  # the status line; bytes read with no element ended
MAX_FIELD = LIMITS["max_field_size"]  # one field, name and value
MAX_FIELDS = LIMITS["max_headers"]  # the head's and the trailers' fields together


def status(reason: str) -> str | None:
    """Why a status line whose reason is `reason` so far is over its bound (None: it is not)."""
    return f"peer's status line is over {MAX_LINE} bytes" if len(reason) > MAX_LINE else None


def field(name: bytes, value: bytes, count: int) -> str | None:
    """Why the answer's `count`th field (head and trailers), `name`: `value`, is over a bound (None: it is not)."""
    if len(name) + len(value) > MAX_FIELD:
        return f"peer's answer has a field over {MAX_FIELD} bytes"
    return f"peer's answer has over {MAX_FIELDS} fields" if count > MAX_FIELDS else None


def stalled(n: int) -> str | None:
    """Why `n` bytes read since an element of the answer ended are too many (None: they are not)."""
    return f"peer's answer went on for {n} bytes with no line ending" if n > MAX_LINE else None
