"""core.lookaside: whom an owner asks before the origin, what the asked node may answer, what may be stored."""

from __future__ import annotations

from edgecache.core import lookaside, popularity
from edgecache.core.hop import Hop, Refused, sign, verify
from edgecache.core.lookaside import Outcome
from edgecache.core.ranges import ByteRange
from edgecache.core.ring import Member, Ring

KEY = b"k" * 32
PRIMARY = "videos|video.test|/a.bin"
A, B, C = Member("a", "127.0.0.1:1"), Member("b", "127.0.0.1:2"), Member("c", "127.0.0.1:3")
VERSIONED = (("ETag", '"v1"'), ("Content-Length", "100"))


def test_the_owner_asks_the_next_owner_that_is_up_and_nobody_else_asks() -> None:
    assert lookaside.previous_owner((A, B, C), "a") == B
    assert lookaside.previous_owner((A, C), "a") == C  # b is down: the next that is up
    assert lookaside.previous_owner((A, B, C), "b") is None  # not the owner: it forwards, it asks nobody
    assert lookaside.previous_owner((A,), "a") is None  # alone


def test_the_previous_owner_of_a_moved_key_is_the_one_asked() -> None:
    three, four = Ring.of((A, B, C)), Ring.of((A, B, C, Member("d", "127.0.0.1:4")))
    keys = [f"videos|video.test|/{i}" for i in range(400)]
    moved = [k for k in keys if four.owners(k)[0].id == "d"]
    assert 60 <= len(moved) <= 140
    for k in moved:  # rendezvous hashing: the old owner is the second owner now
        assert lookaside.previous_owner(four.owners(k), "d") == three.owners(k)[0]


def test_the_asked_node_answers_only_what_it_holds_fresh_and_whole() -> None:
    assert lookaside.may_answer(True, True, False)
    assert not lookaside.may_answer(False, False, False)
    assert not lookaside.may_answer(True, False, False)  # stale, soft-purged or doubted: it would revalidate
    assert not lookaside.may_answer(True, True, True)  # a slice missing: it would fill from the origin


def test_an_answer_is_stored_only_when_it_names_the_version_held_here() -> None:
    assert lookaside.judge(200, VERSIONED, None, None) is Outcome.HIT
    assert lookaside.judge(200, VERSIONED, None, 'e:"v1"') is Outcome.HIT
    assert lookaside.judge(200, VERSIONED, None, 'e:"v2"') is Outcome.OTHER_VERSION
    ranged = (("ETag", '"v1"'), ("Content-Range", "bytes 100-199/1000"), ("Content-Length", "100"))
    assert lookaside.judge(206, ranged, ByteRange(100, 199), 'e:"v1"') is Outcome.HIT
    assert lookaside.judge(206, ranged, ByteRange(0, 99), None) is Outcome.UNUSABLE  # not the range asked
    lm = (("Last-Modified", "Sat, 01 Nov 2025 00:00:00 GMT"), ("Content-Length", "100"))
    date = (("Date", "Mon, 01 Dec 2025 00:00:00 GMT"),)
    assert lookaside.judge(200, lm + date, None, None) is Outcome.HIT  # a strong Last-Modified and the length do
    assert lookaside.judge(200, lm, None, None) is Outcome.UNUSABLE  # no Date: it may name two versions
    assert lookaside.judge(200, (("ETag", 'W/"weak"'), ("Content-Length", "100")), None, None) is Outcome.UNUSABLE
    assert lookaside.judge(200, (("Content-Length", "100"),), None, None) is Outcome.UNUSABLE
    assert lookaside.judge(200, (("ETag", '"v1"'),), None, None) is Outcome.UNUSABLE  # no length: maybe cut
    assert lookaside.judge(504, (), None, None) is Outcome.MISS
    assert lookaside.judge(206, (("Content-Range", "junk"),), ByteRange(0, 9), None) is Outcome.UNUSABLE


def test_what_the_peer_added_is_not_stored() -> None:
    answer = (
        ("ETag", '"v1"'),
        ("Via", "1.0 upstream, 1.1 edgecache"),
        ("Age", "12"),
        ("Cache-Status", "upstream; hit, edgecache; hit"),
    )
    assert lookaside.origin_fields(answer) == (
        ("ETag", '"v1"'),
        ("Age", "12"),
        ("Via", "1.0 upstream"),
        ("Cache-Status", "upstream; hit"),
    )
    assert lookaside.origin_fields((("Via", "1.1 edgecache"), ("Cache-Status", "edgecache; hit"))) == ()


def test_the_lookaside_mark_is_signed_and_other_hops_read_as_before() -> None:
    hop = Hop("a", 1_764_646_800, "lookaside", "-", False, lookaside=True)
    value = sign(KEY, hop, "GET", PRIMARY)
    assert ";fo=0;la=1;sig=" in value
    assert verify(KEY, [value], "GET", PRIMARY, hop.time) == hop
    plain = sign(KEY, Hop("a", hop.time, "x", "-", False), "GET", PRIMARY)
    assert ";la=" not in plain
    assert verify(KEY, [plain], "GET", PRIMARY, hop.time) == Hop("a", hop.time, "x", "-", False, False)
    # The mark cannot be added to, or taken from, a signed field.
    stripped = value.replace(";la=1", "")
    assert verify(KEY, [stripped], "GET", PRIMARY, hop.time) == Refused("bad signature")
    added = sign(KEY, Hop("a", hop.time, "lookaside", "-", False), "GET", PRIMARY).replace(";sig=", ";la=1;sig=")
    assert verify(KEY, [added], "GET", PRIMARY, hop.time) == Refused("bad signature")
    assert verify(KEY, [value.replace("la=1", "la=0")], "GET", PRIMARY, hop.time) == Refused("malformed")


def test_an_object_is_hot_from_its_nth_request_within_the_window_and_while_asked() -> None:
    gate = popularity.Gate(threshold=3, window=10.0, capacity=100)
    assert [gate.asked("a", t) for t in (0.0, 1.0)] == [False, False]
    assert gate.asked("a", 2.0)  # the third within 10 s
    assert gate.asked("a", 11.0)  # each request keeps it hot for another window
    assert gate.asked("a", 20.5)
    assert not gate.asked("a", 31.0)  # not asked for a window: counted again from one
    assert [gate.asked("b", t) for t in (0.0, 11.0, 22.0)] == [False, False, False]  # never 3 within 10 s


def test_the_popularity_table_is_bounded_and_a_scan_makes_nothing_hot() -> None:
    gate = popularity.Gate(threshold=2, window=60.0, capacity=50)
    assert not any(gate.asked(f"k{i}", float(i) / 1000) for i in range(10_000))
    assert len(gate) == 50
    assert not gate.asked("k0", 1.0)  # dropped long ago: one request again
    assert gate.asked("k0", 2.0)
