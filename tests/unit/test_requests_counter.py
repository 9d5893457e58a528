"""observe.requests_counter: the request counter's children remembered by what they are made of, within a bound."""

from __future__ import annotations

from edgecache import metrics
from edgecache.core.status import CacheStatus
from edgecache.proxy import observe


def test_every_code_and_method_an_upstream_or_client_may_send_adds_a_bounded_number_of_keys() -> None:
    before = len(observe._requests)
    for code in range(100, 1000):  # every three-digit code a peer or an origin may answer with
        for method in ("GET", "BREW", "X" * 40, "get"):  # a client's odd methods are "other"
            observe.requests_counter("bounded.site", method, code, CacheStatus.PEER)
    assert len(observe._requests) - before == 9 * 2  # each hundreds, for GET and for "other"


def test_the_child_is_the_one_its_labels_name() -> None:
    for code, method, label, klass in (
        (206, "GET", "GET", "2xx"),
        (599, "BREW", "other", "5xx"),
        (700, "HEAD", "HEAD", "other"),
    ):
        found = observe.requests_counter("labels.site", method, code, CacheStatus.HIT)
        assert found is metrics.REQUESTS.labels("labels.site", label, klass, CacheStatus.HIT.value)


def test_the_fast_paths_tallies_are_bounded_as_the_request_counters_children() -> None:
    before = len(observe._tallies)
    for code in range(100, 1000):  # a stored answer's status is the origin's, whatever it was
        for method in ("GET", "BREW"):
            observe.tally("tally.site", method, code, CacheStatus.MISS, "origin")
    assert len(observe._tallies) - before == 9 * 2
    answered = observe.tally("tally.site", "GET", 404, CacheStatus.MISS, "origin").answer
    assert answered is observe.tally("tally.site", "GET", 410, CacheStatus.MISS, "origin").answer
