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

An origin's head is bounded below these by what a node adds to it in its answer to a peer (origin_head): one the
owner stored and served that its peers' bounds refused marked the owner down on every peer that forwarded it (an
origin answering with 125 fields took its owner out of the ring, for every object, on both paths).
"""

from __future__ import annotations

from collections.abc import Sequence

from edgecache.proxy.headparse import LIMITS

MAX_LINE = LIMITS["max_line_size"]  # the status line; bytes read with no element ended
MAX_FIELD = LIMITS["max_field_size"]  # one field, name and value
MAX_FIELDS = LIMITS["max_headers"]  # the head's and the trailers' fields together
MAX_HEAD = 64 * 1024  # the head's bytes, as peerpool counts them (aiohttp's client, the full handler's, allows less)

# The most a node adds to an origin's head in its answer to a peer: fields (Via, Age, Cache-Status, Accept-Ranges,
# Content-Range, Content-Length, Date, Server, Connection, Transfer-Encoding, with room), bytes (its status line,
# those fields), and bytes to one field: its entry in the Via or Cache-Status it extends.
NODE_FIELDS = 16
NODE_BYTES = 8 * 1024
NODE_ENTRY = 512
_EXTENDED = frozenset({b"via", b"cache-status"})


def status(reason: str) -> str | None:
    """Why a status line whose reason is `reason` so far is over its bound (None: it is not)."""
    return f"peer's status line is over {MAX_LINE} bytes" if len(reason) > MAX_LINE else None


def field(name: bytes, value: bytes, count: int) -> str | None:
    """Why the answer's `count`th field (head and trailers), `name`: `value`, is over a bound (None: it is not)."""
    if len(name) + len(value) > MAX_FIELD:
        return f"peer's answer has a field over {MAX_FIELD} bytes"
    return f"peer's answer has over {MAX_FIELDS} fields" if count > MAX_FIELDS else None


def origin_head(fields: Sequence[tuple[bytes, bytes]]) -> str | None:
    """Why an origin's head (its fields as read) is over what a node can pass on to a peer (None: it is not)."""
    if len(fields) > MAX_FIELDS - NODE_FIELDS:
        return f"answered with {len(fields)} fields, over the {MAX_FIELDS - NODE_FIELDS} a node passes on"
    size = sum(len(k) + len(v) + 4 for k, v in fields)  # "name: value\r\n"
    if size > MAX_HEAD - NODE_BYTES:
        return f"answered with a head of {size} bytes, over the {MAX_HEAD - NODE_BYTES} a node passes on"
    for k, v in fields:
        if len(k) + len(v) > MAX_FIELD - NODE_ENTRY and k.lower() in _EXTENDED:
            return f"answered with a {k.decode('latin-1')} field over {MAX_FIELD - NODE_ENTRY} bytes"
    return None


def stalled(n: int) -> str | None:
    """Why `n` bytes read since an element of the answer ended are too many (None: they are not)."""
    return f"peer's answer went on for {n} bytes with no line ending" if n > MAX_LINE else None
