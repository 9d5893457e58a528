"""What an owner does per forwarded request before its remembered answer goes out: the hop line cut from the head
(forwardmemo.split_hop), the field verified (core.hop), and the answer copied for that hop's viewer
(prepared.for_hop). Each is on the path of every request a peer forwards, so each is written for speed; these
pin down that it still means what the plain versions meant."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import pytest

from edgecache.core.hop import Hop, Refused, sign, verify
from edgecache.proxy.forwardmemo import split_hop
from edgecache.proxy.hit import Hit
from edgecache.proxy.prepared import Prepared, for_hop

KEY = b"k" * 32
PRIMARY = "videos|video.test|/a.bin"
NOW = 1_764_646_800


def test_blanks_around_the_parts_of_a_hop_field_are_allowed_and_nothing_else() -> None:
    hop = Hop("node1", NOW, "1f2e-3a", "127.0.0.2", False)
    value = sign(KEY, hop, "GET", PRIMARY)
    assert verify(KEY, [" " + value.replace(";", " ;\t") + "\t"], "GET", PRIMARY, NOW) == hop
    look = Hop("node1", NOW, "1f2e-3a", "127.0.0.2", True, lookaside=True)
    signed = sign(KEY, look, "HEAD", PRIMARY)
    assert ";la=1;" in signed
    assert verify(KEY, [signed.replace(";la=1;", "; la=1 ;")], "HEAD", PRIMARY, NOW) == look
    assert verify(KEY, [signed.replace(";la=1;", ";la=0;")], "HEAD", PRIMARY, NOW) == Refused("malformed")
    assert verify(KEY, [value.replace("sig=", "sig= x")], "GET", PRIMARY, NOW) == Refused("malformed")
    assert verify(KEY, [value.replace(";", "\x0b;", 1)], "GET", PRIMARY, NOW) == Refused("malformed")


HEAD = b"GET /a HTTP/1.1\r\nHost: video.test\r\n%s\r\nVia: 1.1 edgecache\r\n\r\n"
BARE = b"GET /a HTTP/1.1\r\nHost: video.test\r\nVia: 1.1 edgecache\r\n\r\n"


@pytest.mark.parametrize(
    ("line", "split"),
    [
        (b"Edgecache-Hop: node=a;sig=x", ("node=a;sig=x", BARE)),
        (b"EDGECACHE-HOP:\t node=a;sig=x \t", ("node=a;sig=x", BARE)),
        (b"Edgecache-Hop: node=a; sig=x", None),  # a blank inside: decided whole, find_hit judges it
        (b"Edgecache-Hop: node=\xe9", None),
        (b"Edgecache-Hop:", None),
        (b"Edgecache-Hop: a\r\nedgecache-hop: b", None),  # two hop lines
        (b"X-Edgecache-Hop: a", None),
    ],
)
def test_one_plain_hop_line_is_cut_from_the_head(line: bytes, split: tuple[str, bytes] | None) -> None:
    assert split_hop(HEAD % line) == split


def test_a_hop_answer_is_its_remembered_answer_with_the_hops_viewer_alone_changed() -> None:
    values: dict[str, Any] = {f.name: object() for f in dataclasses.fields(Hit)}
    hit = Hit(**values)
    fields: dict[str, Any] = {f.name: object() for f in dataclasses.fields(Prepared)}
    prepared = Prepared(**fields | {"hit": hit})
    answer = for_hop(prepared, "192.0.2.7", False)
    assert answer.hit is not hit
    assert answer is not prepared
    assert same(answer.hit, dataclasses.replace(hit, viewer="192.0.2.7", fills=False))
    assert same(answer, dataclasses.replace(prepared, hit=answer.hit))
    assert cast(Any, hit).viewer is values["viewer"]  # the remembered one is left as it was


def same(a: object, b: object) -> bool:
    return all(getattr(a, f.name) is getattr(b, f.name) for f in dataclasses.fields(cast(Any, a)))
