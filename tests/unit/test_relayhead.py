"""A forward's answer head, remembered with the owner's Date and Age as holes (proxy.relayhead): always the bytes
encode.relayed gives for the answer in hand, whatever was remembered, and one entry an object while only its Date
and Age move."""

from __future__ import annotations

import pytest

from edgecache.core.keepalive import KeepAlive
from edgecache.proxy import encode
from edgecache.proxy.relayhead import HOLES, RelayedHeads

DATE = b"Fri, 04 Dec 2026 18:00:00 GMT"
MINE = "edgecache; fwd=miss; detail=peer"
OWNER = [  # an edgecache owner's answer to a hop, as llhttp gives its fields
    ("Last-Modified", "Sat, 05 Dec 2026 23:55:00 GMT"),
    ("Etag", '"6932a2f4-1000"'),
    ("Content-Type", "application/octet-stream"),
    ("Date", "Sun, 06 Dec 2026 21:22:13 GMT"),
    ("Server", "edgecache"),
    ("Via", "1.1 edgecache"),
    ("Age", "0"),
    ("Cache-Status", "edgecache; fwd=uri-miss; stored"),
    ("Content-Length", "4096"),
]


def relay(
    heads: RelayedHeads,
    fields: list[tuple[str, str]],
    status: int = 200,
    method: str = "GET",
    keep_alive: KeepAlive = KeepAlive.OPEN,
) -> tuple[bytes | None, bool, KeepAlive]:
    """heads.encode() with the holes proxy.peerpool notes; asserted to be encode.relayed's bytes."""
    raw = [(k.encode("utf-8"), v.encode("utf-8")) for k, v in fields]  # as llhttp gives them
    holes = [i for i, (name, _) in enumerate(raw) if name in HOLES]
    got = heads.encode(status, "R", raw, holes, MINE, method, DATE, keep_alive)
    fields = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
    assert got == encode.relayed(status, "R", tuple(fields), MINE, method, DATE, keep_alive)
    return got


def moved(fields: list[tuple[str, str]], date: str, age: str) -> list[tuple[str, str]]:
    return [(k, date if k == "Date" else age if k == "Age" else v) for k, v in fields]


def test_each_answer_is_written_with_its_own_date_and_age_from_one_remembered_head() -> None:
    heads = RelayedHeads(16, 2**20)
    first, _, _ = relay(heads, OWNER)
    later, chunked, keep = relay(heads, moved(OWNER, "Sun, 06 Dec 2026 21:25:00 GMT", "167"))
    assert len(heads.memo) == 1
    assert first is not None
    assert b"\r\nAge: 0\r\n" in first
    assert b"21:22:13 GMT\r\n" in first
    assert later == first.replace(b"21:22:13", b"21:25:00").replace(b"\r\nAge: 0\r\n", b"\r\nAge: 167\r\n")
    assert (chunked, keep) == (False, KeepAlive.OPEN)
    other = [(k, '"other"' if k == "Etag" else v) for k, v in OWNER]  # another object: another entry
    relay(heads, other)
    assert len(heads.memo) == 2


def test_age_before_date_and_no_age() -> None:
    heads = RelayedHeads(16, 2**20)
    swapped = [OWNER[6], *OWNER[:6], *OWNER[7:]]
    for fields in (swapped, moved(swapped, "d2", "9"), [f for f in OWNER if f[0] != "Age"]):
        relay(heads, fields)
    assert len(heads.memo) == 2


@pytest.mark.parametrize(
    "fields",
    [
        [f for f in OWNER if f[0] != "Date"],  # this node's Date is written: it moves, nothing is remembered
        [("date", "d"), *[f for f in OWNER if f[0] != "Date"]],  # spelt otherwise: a field like any other
        [*OWNER, ("Date", "again")],
        [*OWNER, ("Age", "5")],
        [*OWNER, ("Connection", "Age")],  # Age dropped: no hole for it in the head
        [*OWNER, ("Connection", "date, close")],
    ],
)
def test_heads_not_remembered_with_holes_are_written_in_full(fields: list[tuple[str, str]]) -> None:
    heads = RelayedHeads(16, 2**20)
    relay(heads, fields)
    relay(heads, moved(fields, "Mon, 07 Dec 2026 00:00:00 GMT", "3"))
    assert len(heads.memo) == 0


@pytest.mark.parametrize(
    ("status", "method", "keep_alive", "drop"),
    [
        (200, "HEAD", KeepAlive.OPEN, ""),
        (304, "GET", KeepAlive.OPEN, ""),
        (200, "GET", KeepAlive.OPEN, "Content-Length"),  # chunked
        (200, "GET", KeepAlive.CLOSE, "Content-Type"),
        (206, "GET", KeepAlive.OPEN_10, "Content-Length"),  # a body that ends with the connection
        (200, "GET", KeepAlive.CLOSE_10, ""),
    ],
)
def test_every_framing_is_remembered_apart(status: int, method: str, keep_alive: KeepAlive, drop: str) -> None:
    heads = RelayedHeads(16, 2**20)
    fields = [f for f in OWNER if f[0] != drop]
    for other in (KeepAlive.OPEN, keep_alive):  # the same fields, framed for another viewer first
        relay(heads, fields, status, "GET", other)
        relay(heads, moved(fields, "d", "1"), status, method, other)
    relay(heads, moved(fields, "d2", "2"), status, method, keep_alive)


def test_bytes_past_ascii_pass_as_they_are_and_a_field_that_cannot_be_passed_on_gives_no_head() -> None:
    heads = RelayedHeads(16, 2**20)
    head = relay(heads, [*OWNER, ("X-A", "caf\u20ac")])[0]
    assert head is not None
    assert "X-A: caf\u20ac\r\n".encode() in head
    assert relay(heads, moved(OWNER, "d\r", "0"))[0] is None  # llhttp gives none such: written in full all the same
    assert relay(heads, moved(OWNER, "d", "0\n"))[0] is None
    assert len(heads.memo) == 1


def test_the_memo_holds_its_entries_and_bytes() -> None:
    heads = RelayedHeads(4, 10**6)
    for n in range(20):
        relay(heads, [(k, f'"{n}"' if k == "Etag" else v) for k, v in OWNER])
    assert len(heads.memo) <= 8
