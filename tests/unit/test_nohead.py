"""proxy.nohead.parse_failure: aiohttp's reason for an answer its parser refused, as a viewer's 502 says it: its
first line, without the origin's bytes aiohttp quotes, and bounded; nothing for any other failure."""

from __future__ import annotations

import aiohttp

from edgecache.proxy.nohead import REASON_CHARS, parse_failure


def refused(message: str) -> aiohttp.ClientResponseError:
    return aiohttp.ClientResponseError(None, (), status=400, message=message)  # type: ignore[arg-type]


def test_the_reason_without_the_bytes_quoted() -> None:
    assert parse_failure(refused("Too many headers received")) == "answered malformed HTTP: Too many headers received"
    long = "Got more than 8190 bytes when reading: b'" + "a" * 100 + "...'."
    assert parse_failure(refused(long)) == "answered malformed HTTP: Got more than 8190 bytes when reading"
    token = "Invalid header token:\n\n  b'X-Secret: 1'\n         ^"
    assert parse_failure(refused(token)) == "answered malformed HTTP: Invalid header token"


def test_a_reason_is_bounded_and_printable() -> None:
    assert parse_failure(refused("x" * 500)) == "answered malformed HTTP: " + "x" * REASON_CHARS
    assert parse_failure(refused("")) == "answered malformed HTTP: unparsable"
    assert parse_failure(refused("bad \x1b[31m")) == "answered malformed HTTP: unparsable"
    assert parse_failure(refused("caf\xe9")) == "answered malformed HTTP: unparsable"


def test_other_failures_are_not_parse_failures() -> None:
    assert parse_failure(aiohttp.ServerDisconnectedError()) is None
    assert parse_failure(ConnectionResetError()) is None
    assert parse_failure(TimeoutError()) is None
