"""core.admit without sockets: the refusals before any lookup, and what a request gets instead of a fill."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address, ip_network

import pytest

from edgecache.core import admit, hop
from edgecache.core.admit import NOT_CACHED, NOT_HELD, PASS, Reply
from edgecache.core.signing import Refusal, Signing, sign

RULES = Signing(("k" * 32,))
NOW = 1_900_000_000.0


@dataclass(frozen=True)
class _Site:
    name: str = "videos"
    signing: Signing | None = None
    allow: str | None = None

    def allows(self, client: str) -> bool:
        return self.allow is None or ip_address(client) in ip_network(self.allow)


@pytest.mark.parametrize(
    ("look_aside", "stored", "only_if_cached", "conditional", "expected"),
    [
        (True, False, False, False, NOT_HELD),  # a look-aside never fills
        (True, True, True, True, NOT_HELD),
        (False, True, False, True, None),  # a stored entry is revalidated (a conditional fill)
        (False, True, True, False, NOT_CACHED),  # only-if-cached never asks the origin (RFC 9111 5.2.1.7)
        (False, False, True, False, NOT_CACHED),
        (False, False, True, True, NOT_CACHED),  # only-if-cached before the client's validators
        (False, False, False, True, PASS),  # the client's validators: only the origin can answer them
        (False, False, False, False, None),  # the fill
    ],
)
def test_unfilled(
    look_aside: bool, stored: bool, only_if_cached: bool, conditional: bool, expected: Reply | None
) -> None:
    assert admit.unfilled(look_aside, stored, only_if_cached, conditional) is expected


def test_the_acl_comes_before_the_signed_url() -> None:
    site = _Site(signing=RULES, allow="10.0.0.0/8")
    assert admit.viewer(site, "/a", "", "192.0.2.1", NOW) == Reply(403, "this address may not use site 'videos'")
    assert admit.viewer(site, "/a", "", "10.1.2.3", NOW) == Reply(403, Refusal.MISSING.value)
    query = sign(RULES, "/a", int(NOW) + 60).partition("?")[2]
    assert admit.viewer(site, "/a", query, "10.1.2.3", NOW) is None
    assert admit.viewer(site, "/a", query, "10.1.2.3", NOW + 61) == Reply(403, Refusal.EXPIRED.value)
    assert admit.viewer(_Site(), "/a", "", "192.0.2.1", NOW) is None


def test_fixed_replies() -> None:
    assert admit.no_site("x.test") == Reply(421, "no site is configured for host 'x.test'")
    assert Reply(429, "too many requests from this address") == admit.TOO_MANY
    assert admit.NO_HOST.status == admit.bad_target("target too long").status == 400


def test_a_request_whose_hop_names_the_node_it_would_go_to_is_sent_back() -> None:
    """Proven or not (another key here): the node a well-formed hop names is where the request came from."""
    field = hop.sign(
        b"another cluster's key, long enough", hop.Hop("node2", 1, "r-1", "10.0.0.1", False), "GET", "s|h|/a"
    )
    assert admit.sent_back([field], "node2") is admit.SENT_BACK
    assert admit.sent_back([field], "node3") is None
    assert admit.sent_back([], "node2") is None
    assert admit.sent_back([field, field], "node2") is None  # no hop: a client's request, forwarded as one
    assert admit.sent_back(["node2"], "node2") is None  # malformed
    assert admit.sent_back([field + "x" * 400], "node2") is None  # too long to be read
    assert admit.SENT_BACK.status == 508
