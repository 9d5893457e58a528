"""The head a forwarding node writes for its owner's answer (encode.relayed), remembered with the owner's Date and
Age left as holes: the same object's answers differ in those two values alone, the moment the owner sent them, so
each is written from the owner's answer in hand, never from a remembered one.

encode.relayed stays the one rule of what is passed on: a remembered head is what it gave for the same fields with
a hole in each of those two values, the values put back into it exactly where it placed them. A NUL marks a hole:
llhttp gives no field value with one (RFC 9110 5.5), so no owner's value can stand for a hole. A head is remembered
only when each hole is in it once (a Connection field naming Date or Age drops it) and the owner's Date is one of
its fields (else this node's Date, which moves, would be remembered with it). Remembering costs encode.relayed's
5-7 µs a forward (loadtest/README.md, "Forwarded against direct") once per object while it is asked.
"""

from __future__ import annotations

from edgecache.core.keepalive import KeepAlive
from edgecache.core.memo import Memo, Pool, fields_cost
from edgecache.proxy import encode

# The names of the fields whose value is the moment's, as aiohttp writes them (an edgecache owner does; other spellings
# are fields like any other). proxy.peerpool notes where they are as it reads a head: a pass over the fields here
# cost as much as what is remembered.
HOLES = frozenset({b"Date", b"Age"})
_MARKS = {b"Date": b"\x00d", b"Age": b"\x00a"}
_KINDS = frozenset({(b"Date",), (b"Date", b"Age"), (b"Age", b"Date")})  # each at most once, Date always

Fields = list[tuple[bytes, bytes]]  # as llhttp gives them (proxy.peerpool)
_Key = tuple[tuple[tuple[bytes, bytes], ...], int, str, str, str, str]
# The head's pieces around its holes, whether the body is sent chunked, and the connection's state after it.
_Made = tuple[tuple[bytes, ...], bool, KeepAlive]


def _cost(key: _Key) -> int:
    return fields_cost(key[2], key[0])


def decoded(fields: Fields | tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[str, str], ...]:
    """The fields as the rule of what is passed on reads them: Latin-1, byte for byte."""
    return tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in fields)


class RelayedHeads:
    """encode.relayed for a forward's answer, remembered by its fields with Date and Age as holes."""

    def __init__(self, entries: int, budget: int, pool: Pool | None = None) -> None:
        self.memo: Memo[_Key, _Made] = Memo(entries, budget, _cost, pool)

    def encode(
        self,
        status: int,
        reason: str,
        fields: Fields,
        holes: list[int],
        status_field: str,
        method: str,
        date: bytes,
        keep_alive: KeepAlive,
    ) -> tuple[bytes | None, bool, KeepAlive]:
        """encode.relayed(status, reason, decoded(fields), status_field, method, date, keep_alive), the same bytes;
        `holes`: the places in `fields` of those HOLES names, in order."""
        if len(holes) == 1:
            name, value = fields[holes[0]]
            if name != b"Date" or b"\r" in value or b"\n" in value:
                return encode.relayed(status, reason, decoded(fields), status_field, method, date, keep_alive)
            values: tuple[bytes, ...] = (value,)
        else:
            values = tuple(fields[i][1] for i in holes)
            if tuple(fields[i][0] for i in holes) not in _KINDS or any(b"\r" in v or b"\n" in v for v in values):
                return encode.relayed(status, reason, decoded(fields), status_field, method, date, keep_alive)
        keyed = fields.copy()
        for i in holes:
            name = keyed[i][0]
            keyed[i] = (name, _MARKS[name])
        # keep_alive by its value: an Enum's own hash is a Python call
        key = (tuple(keyed), status, reason, method, keep_alive._value_, status_field)
        made = self.memo.get(key)
        if made is None:
            made = _made(
                encode.relayed(status, reason, decoded(key[0]), status_field, method, date, keep_alive), keyed, holes
            )
            if made is None:  # not to be remembered with holes (one dropped, or the head cannot be sent)
                return encode.relayed(status, reason, decoded(fields), status_field, method, date, keep_alive)
            self.memo[key] = made
        pieces, chunked, after = made
        if len(values) == 1:
            return pieces[0] + values[0] + pieces[1], chunked, after
        return b"".join((pieces[0], values[0], pieces[1], values[1], pieces[2])), chunked, after


def _made(encoded: tuple[bytes | None, bool, KeepAlive], keyed: Fields, holes: list[int]) -> _Made | None:
    """The pieces of a head encoded with holes, or None when a hole is not in it exactly once, in order."""
    head, chunked, after = encoded
    if head is None:
        return None
    pieces, start = [], 0
    for i in holes:
        mark = keyed[i][1]
        where = head.find(mark, start)
        if where < 0 or head.find(mark) != where or head.find(mark, where + 1) >= 0:
            return None
        pieces.append(head[start:where])
        start = where + len(mark)
    pieces.append(head[start:])
    return tuple(pieces), chunked, after
