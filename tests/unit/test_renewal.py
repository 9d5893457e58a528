"""A remembered hit renewed when its time ran out (hit.renewed) is exactly what find_hit() decides from scratch
at that moment: the same status, fields, bytes and next expiry, and the same encoded head once its Age line is
swapped. Over generated responses and requests: Cache-Control on both sides, odd Age fields, Expires, a Date
ahead of or behind the clock, Range, If-None-Match (304) and HEAD."""

from __future__ import annotations

import time
from email.utils import formatdate
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecache.config.model import Site
from edgecache.core.entry import ObjectMeta
from edgecache.core.freshness import Use
from edgecache.core.keepalive import KeepAlive
from edgecache.core.keys import PrimaryRecord, entry_key, make_key
from edgecache.core.route import Router
from edgecache.proxy.decide import Decider
from edgecache.proxy.encode import with_age
from edgecache.proxy.hit import Hit, renewed
from edgecache.proxy.lookup import find_hit
from edgecache.proxy.shared import Shared
from edgecache.storage.disk import DiskTier
from edgecache.storage.memory import MemoryTier
from edgecache.storage.store import Store

T = 1_800_000_000.0
SITE = Site("s", ("a.example",), ("http://o",))
RESPONSE_CC = ["", "max-age=10", "max-age=3", "s-maxage=5", "max-age=10, must-revalidate", "no-cache", "max-age=0"]
RESPONSE_CC += ["max-age=5, stale-while-revalidate=30", "public"]
REQUEST_CC = ["", "max-age=4", "max-age=0", "min-fresh=3", "max-stale=100", "no-cache", "min-fresh=0"]


def _handler(store: Store) -> Shared:
    engine = SimpleNamespace(store=store, slice_size=2**20, origin=SimpleNamespace(loop_token=""))
    return cast(Shared, SimpleNamespace(router=Router([(SITE.hosts, SITE)]), cluster=None, limiter=None, engine=engine))


def _decide_at(moment: float, shared: Shared, method: str, fields: tuple[tuple[str, str], ...]) -> object:
    real = time.time
    time.time = lambda: moment  # find_hit reads the clock itself
    try:
        return find_hit(shared, method, "a.example", "/x", fields, "192.0.2.1")
    finally:
        time.time = real


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    st.sampled_from(RESPONSE_CC),
    st.sampled_from(REQUEST_CC),
    st.integers(-5, 5),  # the Date field against the response time
    st.one_of(st.none(), st.integers(0, 6).map(str), st.just("junk"), st.just("3, 9")),  # the origin's Age
    st.floats(0, 2),  # response delay
    st.floats(0, 3),  # first decision, after the response
    st.floats(0, 15),  # renewal, after the first decision
    st.one_of(st.none(), st.integers(-20, 20)),  # Expires against the response time
    st.sampled_from([None, "bytes=0-3", "bytes=5-", "bytes=-2"]),
    st.sampled_from([None, '"e"', '"x"']),
    st.sampled_from(["GET", "HEAD"]),
)
def test_a_renewed_hit_is_what_find_hit_decides_then(
    response_cc: str,
    request_cc: str,
    date_offset: int,
    origin_age: str | None,
    delay: float,
    first: float,
    later: float,
    expires: int | None,
    range_field: str | None,
    if_none_match: str | None,
    method: str,
) -> None:
    received = T + delay
    stored = [("Date", formatdate(received + date_offset, usegmt=True)), ("ETag", '"e"'), ("Content-Type", "a/b")]
    stored += [("Cache-Control", response_cc)] if response_cc else []
    stored += [("age", origin_age)] if origin_age is not None else []
    stored += [("Expires", formatdate(received + expires, usegmt=True))] if expires is not None else []
    stored.append(("Last-Modified", formatdate(T - 10_000, usegmt=True)))
    asked = [("Host", "a.example")]
    asked += [("Cache-Control", request_cc)] if request_cc else []
    asked += [("Range", range_field)] if range_field else []
    asked += [("If-None-Match", if_none_match)] if if_none_match else []
    fields = tuple(asked)

    # Nothing here reaches the disk tier or the purge log beside it: a directory is all the Store is given.
    store = Store(MemoryTier(2**20), cast(DiskTier, SimpleNamespace(directory=Path("/nonexistent"))))
    key = make_key("s", "a.example", "/x", SITE.key_query)
    record = PrimaryRecord()
    store.remember_record(key.primary, record)
    meta = ObjectMeta(200, tuple(stored), 10, '"e"', False, T, received, 2**20)
    store.remember_meta(entry_key(key.primary, record, fields, ""), meta)
    shared = _handler(store)
    then = received + first
    now = then + later
    before = _decide_at(then, shared, method, fields)
    if not isinstance(before, Hit) or before.still(shared, now):
        return
    again = renewed(before, shared, now)
    fresh = _decide_at(now, shared, method, fields)
    if again is None:
        # Given up only where the full decision is no longer a fresh hit, or exactly at a bound of its freshness
        # (where renewal leaves the answer to the full decision).
        if isinstance(fresh, Hit) and fresh.use is Use.FRESH and before.use is Use.FRESH:
            assert now >= before.fresh_until - 1e-6
        return
    assert isinstance(fresh, Hit)
    assert (again.status, again.headers, again.first, again.last) == (
        fresh.status,
        fresh.headers,
        fresh.first,
        fresh.last,
    )
    assert again.valid_until == pytest.approx(fresh.valid_until, abs=1e-6)
    decider = Decider(shared, lambda: b"-")
    encoded = decider.encode(before, KeepAlive.OPEN)
    assert encoded is not None
    assert with_age(encoded, again.headers) == decider.encode(fresh, KeepAlive.OPEN)
