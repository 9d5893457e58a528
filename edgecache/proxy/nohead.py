"""What a request to an origin or a peer that brought no usable head failed of, as its error says and the origin
metrics count it: a timeout, no answer (refused, reset, closed), or an answer aiohttp's parser refused.

The last was said and counted as the second ("no answer (ClientResponseError)", kind `connect`), which sent an
operator looking for a network fault when the origin had answered with more than 128 fields, a line over 8 KiB or a
space before a field's colon. Its answer names the parser's reason now and it counts as kind `malformed`. A peer's
such answer counts as the peer's kind `malformed` (observe.peer_error), never as a connection reset.
"""

from __future__ import annotations

import logging

import aiohttp

from edgecache import metrics
from edgecache.errors import OriginError

log = logging.getLogger("edgecache.proxy.origin")  # the origin client's log, as these lines were written there

# The most of aiohttp's reason an answer carries: its parser's are shorter ("Got more than 8190 bytes when reading"),
# and the rest is a bound on what an origin's bytes, should a message quote them, can put before a viewer.
REASON_CHARS = 80
SPACED = "Invalid header token"  # aiohttp's reason for whitespace before the colon of a name it does not know


def parse_failure(exc: BaseException) -> str | None:
    """The reason aiohttp's parser gave for an answer it refused, as a viewer's error says it; None when `exc` is
    no such refusal. Its first line, without the origin's bytes its messages quote after the reason (`... when
    reading: b'aaa...'`, on lines of their own under `Invalid header token:`), and REASON_CHARS at most."""
    # A session that follows no redirects and raises for no status raises ClientResponseError only for a head its
    # parser refused (aiohttp's ClientResponse.start).
    if not isinstance(exc, aiohttp.ClientResponseError):
        return None
    lines = exc.message.splitlines()
    reason = lines[0].split(" b'")[0].split(' b"')[0].strip().rstrip(":.").strip() if lines else ""
    if not reason.isascii() or not reason.isprintable():
        reason = ""
    return f"answered malformed HTTP: {reason[:REASON_CHARS] or 'unparsable'}"


def refuse_spaced(raw: aiohttp.ClientResponse) -> None:
    """Raise for an answer with whitespace between a field's name and its colon, as aiohttp's parser (llhttp) does
    for every name but the five it knows (Content-Length, Transfer-Encoding, Connection, Upgrade, Proxy-Connection):
    those it took with their meaning (`Transfer-Encoding : chunked` decoded, `Content-Length : 4` a duplicate of
    another) and the space kept in the name, so the field went out as sent beside the node's own framing, and was
    stored: Content-Length and Transfer-Encoding at once for any hop that reads the spaced name, as ATS does. RFC 9112
    5.1 asks a proxy to remove the whitespace; nginx and Varnish refuse such an answer, as aiohttp does the rest."""
    if any(name.rstrip(b" \t") != name for name, _ in raw.raw_headers):
        raw.close()
        raise aiohttp.ClientResponseError(raw.request_info, raw.history, message=SPACED)


def failure(site: str, base: str, exc: BaseException, peer: str | None, named: str) -> OriginError:
    """The error of a request to `base` that got no usable head, counted as the origin's (`peer` None) by kind;
    a peer's failures are its caller's to count (observe.peer_error reads the same flags). `named`: who failed, as
    the answer says it (OriginClient._named)."""
    who = "origin" if peer is None else f"peer {peer}"
    malformed = parse_failure(exc)
    timeout = isinstance(exc, TimeoutError)
    if peer is None:
        metrics.ORIGIN_ERRORS.labels(site, "timeout" if timeout else "malformed" if malformed else "connect").inc()
    if timeout:
        log.info("%s %s timed out: %s", who, base, exc)
        return OriginError(f"{named}: timed out", timeout=True)
    if peer is None and malformed is not None:
        # An answer came, its bytes not HTTP: the origin's fault, not the network's (the next origin is still asked).
        log.info("%s %s %s: %s", who, base, malformed, exc)
        return OriginError(f"{named}: {malformed}", malformed=True)
    # No response came: the peer refused, or a pooled connection to it was found dead. Nothing reached the
    # client, so an idempotent request may go elsewhere.
    refused = isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError)
    log.info("%s %s failed: %s", who, base, exc)
    if peer is not None:
        problem = f"{exc.__class__.__name__}: {exc}"
    else:  # aiohttp's text names the address
        problem = "could not connect" if refused else f"no answer ({exc.__class__.__name__})"
    # A peer's unparsable answer is its kind `malformed` (observe.peer_error), and, nothing having reached the client,
    # goes elsewhere as a broken connection's does (the fast path's llhttp refusal too: peerpool).
    return OriginError(f"{named}: {problem}", connect=True, refused=refused, malformed=malformed is not None)
