"""core.churn: when a request stops filling an object that keeps changing, and the one request its relay sends."""

from __future__ import annotations

import pytest

from edgecache.core.churn import Next, Tries, misfit, next_try, relay_request
from edgecache.core.keys import make_key, varied

KEY = make_key("videos", "video.test", "/a/b.mp4?itag=1&t=9", ("itag",))
VIA = "1.1 edgecache (abc)"


@pytest.mark.parametrize(
    ("tried", "changed", "purged", "expected"),
    [
        (0, 0, 0, Next.FILL),
        (1, 1, 0, Next.FILL),  # one new version: filled again, the usual case of a changed object
        (2, 2, 0, Next.RELAY),  # two in a row: the third try is the relay, not a third fill
        (2, 1, 0, Next.FILL),  # a 304 or another variant's answer is a try, not a change
        (3, 1, 0, Next.RELAY),  # out of tries, the last one changed: still answered
        (3, 0, 0, Next.SPENT),  # out of tries with no change (304s, variants): relayed, told so (never a 502)
        (2, 0, 2, Next.FILL),  # two fills a purge overtook are no change: the third is a fill after the purges
        (3, 0, 3, Next.OVERTAKEN),  # every fill overtaken: relayed, said as overtaken by a purge
        (3, 1, 2, Next.RELAY),  # a new version among them: the object did change
        (3, 0, 1, Next.OVERTAKEN),  # a purge and 304s: no change, said as overtaken
    ],
)
def test_next_try(tried: int, changed: int, purged: int, expected: Next) -> None:
    assert next_try(tried, changed, purged) is expected


@pytest.mark.parametrize(
    ("tried", "changed", "purged", "expected"),
    [
        (1, 0, 0, Next.SPENT),  # its first try: relayed now, told as tries spent (not a 502, nor two more rounds)
        (2, 0, 1, Next.OVERTAKEN),  # a purge overtook a fill before: told so
        (2, 1, 0, Next.RELAY),  # a new version met before: told so
    ],
)
def test_a_slice_unread_through_its_tries_relays_at_once(tried: int, changed: int, purged: int, expected: Next) -> None:
    assert next_try(tried, changed, purged, unread=True) is expected


def test_tries_count_a_purge_apart_from_a_new_version() -> None:
    # Both paths count so (the handler's loop, a fast-path head's tries): a try begun, then what its fill met.
    tries = Tries().begun().met(purge=True).begun().met(purge=False)
    assert (tries, tries.next()) == (Tries(2, 1, 1), Next.FILL)
    assert tries.begun().met(purge=True).next() is Next.RELAY  # a new version among them: the object did change
    purges = Tries().begun().met(purge=True).begun().met(purge=True)
    assert (purges.next(), purges.begun().met(purge=True).next()) == (Next.FILL, Next.OVERTAKEN)
    # errors.Unread is an Overtaken (its copy drops nothing), counted as neither a purge nor a change
    unread = Tries().begun().met(purge=True, unread=True)
    assert (unread, unread.next()) == (Tries(1, 0, 0, unread=True), Next.SPENT)


def _sent(method: str, client: list[tuple[str, str]], vary: tuple[str, ...] = ()) -> tuple[str, str, list[str]]:
    got = relay_request(method, KEY, varied(vary, tuple(client)), None, tuple(client), (), VIA)
    return got.method, got.target, [f"{k}: {v}" for k, v in got.headers]


def test_a_single_range_goes_as_the_key_names_it_with_the_clients_preconditions() -> None:
    client = [
        ("Range", "bytes = 100-"),
        ("If-Range", '"v7"'),
        ("If-None-Match", '"v6"'),
        ("Cookie", "a=1"),
        ("X-Forwarded-Host", "evil.test"),
        ("Accept-Encoding", "GZIP"),
    ]
    assert _sent("GET", client, ("accept-encoding",)) == (
        "GET",
        "/a/b.mp4?itag=1",  # the key's target: the unkeyed t=9 is not sent, as on a fill
        [
            "Host: video.test",
            "accept-encoding: gzip",
            "Range: bytes=100-",
            'If-Range: "v7"',
            'If-None-Match: "v6"',
            f"Via: {VIA}",
        ],
    )


@pytest.mark.parametrize(
    ("range_field", "sent"),
    [
        ("bytes=-500", ["Range: bytes=-500"]),
        ("bytes=0-9", ["Range: bytes=0-9"]),
        ("bytes=0-9,20-29", []),  # answered whole: Range may be ignored (RFC 9110 14.2), and If-Range with it
        ("bytes=9-0", []),  # invalid: ignored, as the edge ignores it
        ("items=0-9", []),
    ],
)
def test_only_one_range_is_asked_for(range_field: str, sent: list[str]) -> None:
    method, _, headers = _sent("HEAD", [("Range", range_field), ("If-Range", "Sat, 01 Nov 2025 00:00:00 GMT")])
    if_range = ["If-Range: Sat, 01 Nov 2025 00:00:00 GMT"] if sent else []
    assert (method, headers) == ("HEAD", ["Host: video.test", *sent, *if_range, f"Via: {VIA}"])


def test_an_answer_that_varies_on_a_field_sent_otherwise_names_the_fields_for_the_next_relay() -> None:
    client = (("Accept-Encoding", "br"), ("Accept-Language", "de"))
    sent = relay_request("GET", KEY, varied(("accept-encoding",), client), None, client, (), VIA).headers
    assert misfit((), sent, client) is None
    assert misfit(("accept-encoding",), sent, client) is None
    assert misfit(("*",), sent, client) is None
    assert misfit(("accept-encoding", "accept-language"), sent, client) == ("accept-encoding", "accept-language")
