"""A remembered hit's answer, its Age written as it is sent (prepared.head_at), is exactly what find_hit()
decides from scratch at that moment while it is fresh for its request: the same status, fields but Age, bytes, and
the same encoded head. Over generated responses and requests: Cache-Control on both sides, odd Age fields, Expires,
a Date ahead of or behind the clock, Range, If-None-Match (304) and HEAD."""

from __future__ import annotations

import math
import time
from email.utils import formatdate
from pathlib import Path
from types import SimpleNamespace
from typing import cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecache.config.model import Site
from edgecache.core.entry import ObjectMeta
from edgecache.core.freshness import Use
from edgecache.core.keepalive import KeepAlive
from edgecache.core.keys import PrimaryRecord, entry_key, make_key
from edgecache.core.route import Router
from edgecache.proxy.decide import Decider
from edgecache.proxy.hit import Hit, age_of
from edgecache.proxy.lookup import find_hit
from edgecache.proxy.prepared import head_at
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
def test_a_remembered_hit_is_what_find_hit_decides_then(
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
    if not isinstance(before, Hit) or before.fresh_until == -math.inf:
        return
    decider = Decider(shared, lambda: b"-")
    prepared = decider.planned(before, method, KeepAlive.OPEN)
    assert prepared is not None
    assert prepared.age_span is not None
    decided = prepared.head
    assert head_at(prepared, then) == decided  # its Age as decided
    if now >= before.fresh_until:  # no longer its answer: decided again (Decider._current)
        return
    fresh = _decide_at(now, shared, method, fields)
    assert isinstance(fresh, Hit)
    assert fresh.use is Use.FRESH
    assert (before.status, before.first, before.last) == (fresh.status, fresh.first, fresh.last)
    assert [f for f in before.headers if f[0] != "Age"] == [f for f in fresh.headers if f[0] != "Age"]
    assert head_at(prepared, now) == decider.encode(fresh, KeepAlive.OPEN)
    # About the moment its Age next ticks, in order (a float's step at today's clock is 2.4e-7 s): each is the head
    # decided from scratch at that moment, whether or not the head last written is taken as it is.
    tick = meta.response_time + (int(age_of(before, now)) + 1 - before.initial_age)
    for moment in (tick - 2e-3, tick - 5e-4, tick - 2.4e-7, tick, tick + 2.4e-7, tick + 1e-3):
        if now <= moment < before.fresh_until:
            fresh = _decide_at(moment, shared, method, fields)
            assert isinstance(fresh, Hit)
            assert head_at(prepared, moment) == decider.encode(fresh, KeepAlive.OPEN)
    assert head_at(prepared, then) == decided  # whatever was written since
