"""core.lookaside: whom an owner asks before the origin, what the asked node may answer, what may be stored."""

from __future__ import annotations

from typing import Any

from edgecache.core import lookaside, popularity
from edgecache.core.freshness import Policy
from edgecache.core.headers import Headers
from edgecache.core.hop import Hop, Refused, sign, verify
from edgecache.core.lookaside import Asked, Outcome
from edgecache.core.ranges import ByteRange
from edgecache.core.ring import Member, Ring

KEY = b"k" * 32
PRIMARY = "videos|video.test|/a.bin"
A, B, C = Member("a", "127.0.0.1:1"), Member("b", "127.0.0.1:2"), Member("c", "127.0.0.1:3")
FOR_AN_HOUR = (("Cache-Control", "max-age=3600"),)
VERSIONED = (*FOR_AN_HOUR, ("ETag", '"v1"'), ("Content-Length", "100"))
NOW = 1_764_547_200.0  # Mon, 01 Dec 2025 00:00:00 GMT
SENT = (("Host", "video.test"), ("Via", "1.1 edgecache"))
ASKED: dict[str, Any] = {"varied": (), "policy": Policy(), "at": NOW - 1}


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


def judged(status: int, headers: Headers, span: ByteRange | None = None, held: str | None = None, **kw: Any) -> Outcome:
    """judge() of an answer that arrives at NOW, asked a second before with the fill's fields (no Vary known)."""
    return lookaside.judge(status, headers, Asked(SENT, span, held, **{**ASKED, **kw}), NOW)


def test_an_answer_is_stored_only_when_it_names_the_version_held_here() -> None:
    assert judged(200, VERSIONED) is Outcome.HIT
    assert judged(200, VERSIONED, None, 'e:"v1"') is Outcome.HIT
    assert judged(200, VERSIONED, None, 'e:"v2"') is Outcome.OTHER_VERSION
    ranged = (*FOR_AN_HOUR, ("ETag", '"v1"'), ("Content-Range", "bytes 100-199/1000"), ("Content-Length", "100"))
    assert judged(206, ranged, ByteRange(100, 199), 'e:"v1"') is Outcome.HIT
    assert judged(206, ranged, ByteRange(0, 99)) is Outcome.UNUSABLE  # not the range asked
    lm = (("Last-Modified", "Sat, 01 Nov 2025 00:00:00 GMT"), ("Content-Length", "100"))
    date = (("Date", "Mon, 01 Dec 2025 00:00:00 GMT"),)
    assert judged(200, lm + date) is Outcome.HIT  # a strong Last-Modified and the length do (fresh by heuristic)
    assert judged(200, (*FOR_AN_HOUR, *lm)) is Outcome.UNUSABLE  # no Date: it may name two versions
    assert judged(200, (*FOR_AN_HOUR, ("ETag", 'W/"weak"'), ("Content-Length", "100"))) is Outcome.UNUSABLE
    assert judged(200, (*FOR_AN_HOUR, ("Content-Length", "100"))) is Outcome.UNUSABLE
    assert judged(200, (*FOR_AN_HOUR, ("ETag", '"v1"'))) is Outcome.UNUSABLE  # no length: maybe cut
    assert judged(504, ()) is Outcome.MISS
    assert judged(206, (("Content-Range", "junk"),), ByteRange(0, 9)) is Outcome.UNUSABLE


def test_an_answer_is_stored_only_fresh_here_with_its_age_carried_and_storable_by_a_shared_cache() -> None:
    """What a peer of this release never answers (may_use: held fresh) is not stored when a peer of another release,
    or a faulty one, answers it: stale by its Age or its Expires, or not for a shared cache."""
    body = (("ETag", '"v1"'), ("Content-Length", "100"))
    assert judged(200, (("Cache-Control", "max-age=60"), ("Age", "58"), *body)) is Outcome.HIT  # 59 s old on arrival
    assert judged(200, (("Cache-Control", "max-age=60"), ("Age", "59"), *body)) is Outcome.STALE  # 60: not fresh
    assert judged(200, (("Cache-Control", "max-age=60"), ("Age", "600"), *body)) is Outcome.STALE
    assert judged(200, (("Cache-Control", "max-age=60"), ("Age", "600"), *body), policy=Policy(min_ttl=3600.0)) is (
        Outcome.HIT  # this node's own floor counts it fresh, as it would count its own copy
    )
    day = (("Date", "Mon, 01 Dec 2025 00:00:00 GMT"),)
    assert judged(200, (*day, ("Expires", "Sun, 30 Nov 2025 23:00:00 GMT"), *body)) is Outcome.STALE  # in the past
    assert judged(200, (*day, ("Expires", "Mon, 01 Dec 2025 01:00:00 GMT"), *body)) is Outcome.HIT
    assert judged(200, (("Date", "Sun, 30 Nov 2025 00:00:00 GMT"), ("Cache-Control", "max-age=3600"), *body)) is (
        Outcome.STALE  # its Date says a day old, whatever its Age says
    )
    for cc in ("private, max-age=3600", "no-store, max-age=3600", "no-cache, max-age=3600", "s-maxage=0, max-age=60"):
        assert judged(200, (("Cache-Control", cc), *body)) is Outcome.STALE, cc
    assert judged(200, (*FOR_AN_HOUR, ("Vary", "*"), *body)) is Outcome.STALE
    assert judged(200, (*FOR_AN_HOUR, ("Set-Cookie", "a=1"), *body)) is Outcome.STALE
    # Made by the origin before a soft purge of it here (its age says when): the purged bytes.
    assert judged(200, (*FOR_AN_HOUR, ("Age", "100"), *body), soft_before=NOW - 50) is Outcome.STALE
    assert judged(200, (*FOR_AN_HOUR, ("Age", "10"), *body), soft_before=NOW - 50) is Outcome.HIT


def test_an_answer_is_taken_only_as_the_viewers_request_takes_a_stored_answer() -> None:
    """The peer was asked with the key's fields alone: the viewer's own directives are judged here (RFC 9111 5.2.1)."""
    for cc in ("no-cache", "max-age=0", "min-fresh=7200"):
        assert judged(200, VERSIONED, viewer=(("Cache-Control", cc),)) is Outcome.STALE, cc
    assert judged(200, VERSIONED, viewer=(("Pragma", "no-cache"),)) is Outcome.STALE
    assert judged(200, VERSIONED, viewer=(("Cache-Control", "max-age=7200"),)) is Outcome.HIT  # 1 s old


def taken_from_owner(status: int, headers: Headers, held: Headers | None = None, **kw: Any) -> bool:
    return lookaside.from_owner(status, headers, Asked(SENT, None, None, **{**ASKED, **kw}), NOW, held)


def test_an_owners_answer_to_a_copys_fill_is_taken_fresh_here_and_for_the_viewer_or_when_never_stored() -> None:
    """A hot copy's fill: the owner's answer, with no version to prove (nothing held here is its own), is taken by
    the one rule a look-aside's freshness is (fresh here, Age carried, the viewer's directives); one no shared cache
    stores is the origin's, passed on by the owner, and taken for its viewer alone."""
    assert taken_from_owner(200, (("Cache-Control", "max-age=60"), ("Age", "58")))  # no validators needed
    assert taken_from_owner(206, (("Cache-Control", "max-age=60"), ("Age", "58"), ("Content-Range", "bytes 0-9/99")))
    assert not taken_from_owner(200, (("Cache-Control", "max-age=60"), ("Age", "600")))
    assert not taken_from_owner(200, (("Cache-Control", "max-age=60, stale-while-revalidate=900"), ("Age", "600")))
    assert not taken_from_owner(200, (("Date", "Sun, 30 Nov 2025 00:00:00 GMT"), *FOR_AN_HOUR))
    assert not taken_from_owner(200, (("Cache-Control", "no-cache, max-age=3600"),))
    assert not taken_from_owner(200, (*FOR_AN_HOUR, ("Age", "100")), soft_before=NOW - 50)
    for cc in ("max-age=10", "min-fresh=3590", "no-cache"):
        assert not taken_from_owner(200, (*FOR_AN_HOUR, ("Age", "50")), viewer=(("Cache-Control", cc),)), cc
    assert taken_from_owner(200, (*FOR_AN_HOUR, ("Age", "50")), viewer=(("Cache-Control", "max-age=100"),))
    for cc in ("private, max-age=3600", "no-store"):
        assert taken_from_owner(200, (("Cache-Control", cc), ("Age", "600"))), cc
    # A 304 to a copy's revalidation is judged as the copy it makes (its fields over the held copy's).
    held = (*FOR_AN_HOUR, ("ETag", '"v1"'), ("Age", "50"))
    assert taken_from_owner(304, (("ETag", '"v1"'), ("Age", "50")), held)
    assert not taken_from_owner(304, (("ETag", '"v1"'), ("Age", "50")), held, viewer=(("Cache-Control", "max-age=10"),))
    assert not taken_from_owner(304, (("Cache-Control", "max-age=60"), ("Age", "600")), held)
    assert taken_from_owner(304, (("Cache-Control", "max-age=60"), ("Age", "600")))  # nothing held: never stored
    assert taken_from_owner(502, ())


def test_a_request_asking_of_an_answers_age_itself_is_told_from_a_plain_one() -> None:
    """Such a request joins no fill a peer's cache may answer (proxy.fillhead.answers): judged for another request."""
    for fields in (
        ("Cache-Control", "no-cache"),
        ("Cache-Control", "max-age=0"),
        ("Cache-Control", "max-age=600"),
        ("Cache-Control", "min-fresh=5"),
        ("Pragma", "no-cache"),
        ("Cache-Control", "public, No-Cache"),
    ):
        assert lookaside.asks_of_age((fields,)), fields
    for fields in ((), (("Cache-Control", "max-stale=60"),), (("Cache-Control", "no-transform"),), (("Pragma", "x"),)):
        assert not lookaside.asks_of_age(fields), fields


def test_an_answer_is_stored_only_varied_as_the_key_asked() -> None:
    gzip = (*VERSIONED, ("Vary", "Accept-Encoding"))
    assert judged(200, gzip) is Outcome.HIT  # nothing known here: stored under the fields sent, as an origin's
    assert judged(200, gzip, varied=("accept-encoding",)) is Outcome.HIT
    assert judged(200, (*VERSIONED, ("Vary", "accept-encoding, Accept-Language")), varied=("accept-encoding",)) is (
        Outcome.OTHER_VERSION
    )
    assert judged(200, VERSIONED, varied=("accept-encoding",)) is Outcome.OTHER_VERSION


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
