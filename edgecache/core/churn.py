"""An object that changes faster than it can be filled: when to stop filling it, and what to ask the origin instead.

A cached answer is made of slices, each fetched in its own origin request; a slice of another version than the
rest is never mixed in (errors.VersionChanged), and the request starts again. Under churn (several versions a second)
every fill may meet a new version, and a request that kept starting again would end in a 502 although the origin
could have given it its answer in one response. So after CHANGES_BEFORE_RELAY such starts, the request is relayed
(Varnish's pass, ATS's no-cache): ONE origin request for what the client asked (the whole object, or its one range),
its answer streamed as it comes and never stored, so its bytes are those of the one version that answer carries.

What is keyed is still what is fetched: the request is a fill's (core.forward.fill_request: the key's target and
Vary'd fields, the site's forward_fields), plus the client's Range when it names one range, and the client's own
preconditions, which only the origin can judge for the version it answers with (as admit.unfilled passes them).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from edgecache.core.forward import OriginRequest, fill_request
from edgecache.core.headers import Headers, get_all, get_first
from edgecache.core.keys import CacheKey, Varied, variant
from edgecache.core.ranges import parse_range_header

CHANGES_BEFORE_RELAY = 2  # fills of a request that met a new version; the next try is the relay
TRIES = 3  # tries of a request in all (a revalidation's 304 and another variant's answer are tries too)
RELAYS = 2  # a relay answered for another variant than the client's asks once more, with the fields it named

# The client's preconditions, passed with the relay: the origin answers them for the version it sends.
_PRECONDITIONS = ("If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since")


class Next(StrEnum):
    FILL = "fill"  # look up and fill (again)
    RELAY = "relay"  # the object kept changing: one origin request, relayed unstored
    OVERTAKEN = "overtaken"  # purges here kept overtaking its fills: the same relay, said as an answer a purge overtook
    SPENT = "tries-spent"  # tries spent, none met a new version nor a purge here: the same relay, said so


def next_try(tried: int, changed: int, purged: int = 0, unread: bool = False) -> Next:
    """What a request does next, having `tried` tries of which `changed` met a new version of the object and `purged`
    had their fill overtaken by a purge here (errors.Overtaken). A purge is no new version: the origin changed
    nothing, and the next try looks the object up after it (a fresh fill, or a copy stored since), so only a request
    out of tries is relayed for it, and never said to be one whose object kept changing.
    A peer's answer that broke off before the request's bytes (errors.PeerCut) counts as a change: its usual cause is
    one (an owner cuts its answer when its own fill meets a new version at the origin), and a killed owner's next try
    goes elsewhere; two such cuts are as good a sign as two changes that fills will not complete, and the relay asks
    the origin itself, never that peer. Tries that met neither (each a 304, or another variant's answer, that a purge
    in another worker then dropped before the next look-up) are spent the same: SPENT, relayed, never a 502.
    `unread`: a slice of its answer went unread through the tries its reader has for one (errors.Unread: each fetch of
    it that reader met, another worker's or one it joined, ended without storing it). Those were the request's tries:
    it is relayed now (SPENT, or as what its earlier tries met), not looked up for more rounds of them: the origin
    failed nothing, and the viewer is answered, in one more origin request at most."""
    out = tried >= TRIES or unread
    if changed >= CHANGES_BEFORE_RELAY or (out and changed):
        return Next.RELAY
    if not out:
        return Next.FILL
    return Next.OVERTAKEN if purged else Next.SPENT


@dataclass(frozen=True, slots=True)
class Tries:
    """A request's tries so far: all of them, those that met a new version of the object, those a purge here overtook,
    and whether a slice of its answer went unread through its reader's tries (`unread`: none are left).
    Either path counts its tries in one (proxy.handler's loop, a fast-path connection's head: FastPath.tries)."""

    tried: int = 0
    changed: int = 0
    purged: int = 0
    unread: bool = False

    def begun(self) -> Tries:
        """With one more try begun (a look-up, and what it decides)."""
        return replace(self, tried=self.tried + 1)

    def met(self, purge: bool, unread: bool = False) -> Tries:
        """With the last try's fill met by a new version, or (`purge`) overtaken by a purge here; or (`unread`) with a
        slice of its answer unread through its reader's tries (errors.Unread), which is neither that it knows of."""
        if unread:
            return replace(self, unread=True)
        return replace(self, changed=self.changed + (not purge), purged=self.purged + purge)

    def next(self) -> Next:
        return next_try(self.tried, self.changed, self.purged, self.unread)


def relay_request(
    method: str,
    key: CacheKey,
    fields: Varied,
    origin_host: str | None,
    client: Headers,
    unkeyed: Headers,
    via: str,
) -> OriginRequest:
    """The one origin request of a relay: a fill's request for the whole object, with the client's Range (rewritten
    from its parse: one range only, a list of ranges is answered whole, RFC 9110 14.2 lets a server ignore Range),
    its If-Range with it, and its preconditions. HEAD stays HEAD: no body is fetched for nobody."""
    sent = fill_request(key, fields, origin_host, None, None, unkeyed, via)
    extra: list[tuple[str, str]] = []
    specs = parse_range_header(get_first(client, "range"))
    if specs is not None and len(specs) == 1:
        first, last = specs[0].first, specs[0].last
        extra.append(("Range", f"bytes={'' if first is None else first}-{'' if last is None else last}"))
        if (if_range := get_first(client, "if-range")) is not None:
            extra.append(("If-Range", if_range))
    extra.extend((name, value) for name in _PRECONDITIONS for value in get_all(client, name))
    *head, via_field = sent.headers
    return replace(sent, method="HEAD" if method == "HEAD" else "GET", headers=(*head, *extra, via_field))


def misfit(vary: tuple[str, ...], sent: Headers, client: Headers) -> tuple[str, ...] | None:
    """None when the relayed answer, whose Vary names `vary`, may go to the client: the fields it varies on were
    sent as the client has them. Else the fields to send in the next relay (RELAYS): the key's Vary was the
    record's, and a version that began to vary on another field answered for a value the client did not send."""
    names = tuple(name for name in vary if name != "*")
    return None if variant(names, sent) == variant(names, client) else names
