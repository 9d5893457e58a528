"""Shared-cache policy (RFC 9111, RFC 5861): may a response be stored, how long is it fresh, may it be reused.

Pure functions of header tuples and times; `now` and the request/response times are always parameters.

Choices where the RFCs let a shared cache choose:
- only GET responses are stored: a HEAD response has no content to reuse for a later GET (RFC 9110 9.3.2);
- several Expires lines, or an Expires or s-maxage that does not parse, mean already stale (RFC 9111 4.2.1, 5.3);
- heuristic freshness (4.2.2) is policy.heuristic_fraction of Date - Last-Modified, capped at policy.heuristic_max;
- Age: only the first member counts and an invalid one is ignored (5.1), numbers clamp to 2**31 (1.2.2);
- stale content is never served beyond policy.max_stale_ceiling, whatever max-stale, SWR or SIE allow;
- a 304 never updates Content-Length nor Content-Range (3.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from edgecache.core.cachecontrol import CacheControl, parse_cache_control, parse_pragma_no_cache, valid_sf_directives
from edgecache.core.conditional import strong_match, weak_match
from edgecache.core.entry import ObjectMeta
from edgecache.core.headers import HOP_BY_HOP, Headers, connection_tokens, get_all, get_first, list_values
from edgecache.core.httpdate import parse_http_date

CACHEABLE_BY_DEFAULT = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# Statuses whose semantics this cache understands (for must-understand, RFC 9111 5.2.2.3).
# 206 and 304 are understood too (3), but 304s are merged (merge_304), never stored.
UNDERSTOOD = CACHEABLE_BY_DEFAULT | {302, 303, 307, 400, 403, 500, 502, 503, 504}


@dataclass(frozen=True, slots=True)
class Policy:
    heuristic_fraction: float = 0.1
    heuristic_max: float = 86400.0
    store_set_cookie: bool = False
    min_ttl: float | None = None
    max_ttl: float | None = None
    max_stale_ceiling: float = 86400.0
    max_object_size: int | None = None  # bytes; None: the node's cache.max_object_size (core.objectsize)


@dataclass(frozen=True, slots=True)
class StoreDecision:
    store: bool
    reason: str


http_date = parse_http_date
GREATEST_AGE = 2**31  # RFC 9111 1.2.2

# RFC 9111 3.1: fields specific to the proxy a cache forwards through; never stored, like hop-by-hop ones.
_PROXY_FIELDS = frozenset({"proxy-authenticate", "proxy-authentication-info", "proxy-authorization"})


def response_cc(resp: Headers) -> tuple[CacheControl, bool]:
    """The directives this cache obeys, and whether they came from CDN-Cache-Control.

    RFC 9213: a CDN uses CDN-Cache-Control when present and then ignores Cache-Control and Expires.
    """
    if get_all(resp, "cdn-cache-control") and valid_sf_directives(get_all(resp, "cdn-cache-control")):
        return parse_cache_control(resp, field="cdn-cache-control"), True
    return parse_cache_control(resp), False


def _explicit(cc: CacheControl, resp: Headers, targeted: bool) -> bool:
    expires = get_first(resp, "expires") is not None and not targeted
    return cc.s_maxage is not None or cc.max_age is not None or expires


def storable(method: str, status: int, req: Headers, resp: Headers, policy: Policy) -> StoreDecision:
    """RFC 9111 3 for a shared cache."""
    if method != "GET":  # 3: a method the cache understands and defined as cacheable; HEAD: see module doc
        return StoreDecision(False, "method")
    if status < 200 or status == 304 or status >= 600:  # 3: final, and 304s update (4.3.4) instead of being stored
        return StoreDecision(False, "status")
    rcc = parse_cache_control(req)
    scc, targeted = response_cc(resp)
    if scc.must_understand:  # 5.2.2.3: a cache that understands the status ignores no-store
        if status not in UNDERSTOOD:
            return StoreDecision(False, "must-understand")
    elif scc.no_store:
        return StoreDecision(False, "no-store")
    if rcc.no_store:
        return StoreDecision(False, "no-store")
    if scc.private:  # 5.2.2.7: unqualified private is for private caches only
        return StoreDecision(False, "private")
    if get_first(req, "authorization") is not None and not (  # 3.5
        scc.public or scc.s_maxage is not None or scc.must_revalidate
    ):
        return StoreDecision(False, "authorization")
    if "*" in list_values(resp, "vary"):  # 4.1: Vary: * never matches a later request
        return StoreDecision(False, "vary-star")
    if get_first(resp, "set-cookie") is not None and not policy.store_set_cookie:
        return StoreDecision(False, "set-cookie")
    # 3: a heuristically cacheable status, public, or explicit freshness (Expires, max-age, s-maxage).
    if status in CACHEABLE_BY_DEFAULT or scc.public or _explicit(scc, resp, targeted):
        return StoreDecision(True, "ok")
    return StoreDecision(False, "no-freshness")


# The reasons storable() gives from the response's fields, which tell of the object's next answers too (of one that
# is no error: proxy.revalidating.let_go_at_head). Not a status, nor "no-freshness" (a status stored only when told
# so: an error or a redirect of the moment, mostly); a method or an Authorization are the request's.
BY_FIELDS = frozenset({"must-understand", "no-store", "private", "vary-star", "set-cookie"})


def freshness_lifetime(resp: Headers, policy: Policy, status: int, response_time: float | None = None) -> float:
    """RFC 9111 4.2.1 (shared cache), then the site's TTL floor and ceiling if configured."""
    cc, targeted = response_cc(resp)
    lifetime = _lifetime(cc, resp, policy, status, response_time, targeted)
    if policy.min_ttl is not None:
        lifetime = max(lifetime, policy.min_ttl)
    if policy.max_ttl is not None:
        lifetime = min(lifetime, policy.max_ttl)
    return lifetime


def _lifetime(
    cc: CacheControl, resp: Headers, policy: Policy, status: int, response_time: float | None, targeted: bool
) -> float:
    if "s-maxage" in cc.invalid:
        return 0.0  # 4.2.1: invalid freshness information is best taken as stale
    if cc.s_maxage is not None:  # 5.2.2.10: s-maxage overrides max-age and Expires in a shared cache
        return float(cc.s_maxage)
    if cc.max_age is not None:
        return float(cc.max_age)
    date = http_date(get_first(resp, "date"))
    base = date if date is not None else response_time
    expires_values = [] if targeted else get_all(resp, "expires")
    if expires_values:
        expires = http_date(expires_values[0])
        if expires is None or base is None or len(expires_values) > 1:
            return 0.0  # invalid Expires, e.g. "0": already expired (5.3)
        return max(0.0, expires - base)
    last_modified = http_date(get_first(resp, "last-modified"))
    if last_modified is not None and base is not None and (status in CACHEABLE_BY_DEFAULT or cc.public):
        return min(max(0.0, (base - last_modified) * policy.heuristic_fraction), policy.heuristic_max)
    return 0.0


def current_age(resp: Headers, request_time: float, response_time: float, now: float) -> float:
    """RFC 9111 4.2.3; a missing or invalid Date gives apparent_age 0 (as if Date were response_time).

    response_delay and resident_time are floored at 0: they only go negative when a clock steps backwards, and
    a cache must never make a response look younger than it is.
    """
    return initial_age(resp, request_time, response_time) + max(0.0, now - response_time)


def initial_age(resp: Headers, request_time: float, response_time: float) -> float:
    """RFC 9111 4.2.3's corrected_initial_age: current_age() at response_time. The age at any later moment adds
    the time since, so an answer kept for a while (proxy.hit.age_text) computes its Age without the fields."""
    age_value = parse_age(resp)
    date = http_date(get_first(resp, "date"))
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    corrected_age_value = age_value + max(0.0, response_time - request_time)
    return max(apparent_age, corrected_age_value)


def parse_age(resp: Headers) -> int:
    """RFC 9111 5.1: Age is a singleton; of a list (or repeated lines) only the first member counts, and when that
    is not a non-negative integer the field is ignored (0). A parameter after ";" is dropped."""
    values = list_values(resp, "age")
    if not values:
        return 0
    first = values[0].split(";", 1)[0].strip()
    if not (first.isdigit() and first.isascii()):
        return 0
    # Compare lengths before int(): Python refuses to convert strings of over 4300 digits (ValueError).
    first = first.lstrip("0") or "0"
    return GREATEST_AGE if len(first) > 10 else min(int(first), GREATEST_AGE)


@dataclass(frozen=True, slots=True)
class Freshness:
    lifetime: float
    age: float

    @property
    def fresh(self) -> bool:
        return self.lifetime > self.age

    @property
    def staleness(self) -> float:
        return max(0.0, self.age - self.lifetime)


def evaluate(
    resp: Headers, status: int, request_time: float, response_time: float, now: float, policy: Policy
) -> Freshness:
    return Freshness(
        freshness_lifetime(resp, policy, status, response_time), current_age(resp, request_time, response_time, now)
    )


def freshness_of(meta: ObjectMeta, now: float, policy: Policy) -> Freshness:
    """evaluate() for a stored entry, from the fields and times it was stored with."""
    return evaluate(meta.headers, meta.status, meta.request_time, meta.response_time, now, policy)


class Use(StrEnum):
    FRESH = "fresh"
    STALE_OK = "stale-ok"
    REVALIDATE = "revalidate"
    STALE_WHILE_REVALIDATE = "swr"


def _must_revalidate_when_stale(scc: CacheControl) -> bool:
    # 4.2.4: never served stale against these. s-maxage implies proxy-revalidate for shared caches (5.2.2.10),
    # and one that did not parse still says the origin meant shared caches to revalidate.
    return scc.must_revalidate or scc.proxy_revalidate or scc.s_maxage is not None or "s-maxage" in scc.invalid


def never_stale(resp: Headers) -> bool:
    """A stored response that is never served stale, stale-if-error or not (RFC 9111 4.2.4): a cache that cannot
    revalidate it answers with an error, a 504 (5.2.2.2)."""
    return _must_revalidate_when_stale(response_cc(resp)[0])


def usable(req: Headers, resp: Headers, fresh: Freshness, policy: Policy) -> Use:
    """RFC 9111 4 and 5.2.1, RFC 5861 3: may the stored response answer this request, and how."""
    rcc, (scc, _) = parse_cache_control(req), response_cc(resp)
    # A qualified no-cache="field" only keeps those fields from reuse; they are never stored (strip_for_storage).
    if scc.no_cache or rcc.no_cache or parse_pragma_no_cache(req):
        return Use.REVALIDATE
    if rcc.max_age is not None and fresh.age > rcc.max_age:
        return Use.REVALIDATE
    if rcc.min_fresh is not None and fresh.lifetime - fresh.age < rcc.min_fresh:
        return Use.REVALIDATE
    if fresh.fresh:
        return Use.FRESH
    if _must_revalidate_when_stale(scc) or fresh.staleness > policy.max_stale_ceiling:
        return Use.REVALIDATE
    if rcc.max_stale_any or (rcc.max_stale is not None and fresh.staleness <= rcc.max_stale):
        return Use.STALE_OK
    if scc.stale_while_revalidate is not None and fresh.staleness <= scc.stale_while_revalidate:
        return Use.STALE_WHILE_REVALIDATE
    return Use.REVALIDATE


def stored_use(
    req: Headers, resp: Headers, fresh: Freshness, policy: Policy, asked_at: float, soft_before: float
) -> Use:
    """usable(), but REVALIDATE for a response asked of the origin (at `asked_at`, its request_time) before a soft
    purge of it: the origin made it before the purge, even when it arrived after."""
    return Use.REVALIDATE if asked_at < soft_before else usable(req, resp, fresh, policy)


def revalidated_since(
    stored: ObjectMeta,
    validating: ObjectMeta,
    req: Headers,
    policy: Policy,
    soft_before: float,
    asked_at: float,
    now: float,
) -> bool:
    """May `stored` (what the shared disk holds now) answer a revalidation of `validating`, asked at `asked_at`,
    instead of the origin? When it is the same copy that another worker's revalidation refreshed since (a newer
    response to a request made after any soft purge), and either that answer came after this one was asked (its
    requests join it, as they join a fill in flight in their own worker) or the copy is fresh for this request."""
    if stored.slice_version != validating.slice_version or stored.response_time <= validating.response_time:
        return False
    return answered_since(stored, req, policy, soft_before, asked_at, now)


def answered_since(
    stored: ObjectMeta, req: Headers, policy: Policy, soft_before: float, asked_at: float, now: float
) -> bool:
    """May `stored`, an answer another worker's fill stored on the shared disk, answer the request whose fill was
    asked at `asked_at` instead of the origin? When it was asked after any soft purge, and either it came after
    this fill was asked, made by the origin then (its requests join it, as they join an origin fill in flight in
    their own worker), or it is fresh for this request. An answer with an Age was made that long before it came: a
    previous owner's copy (core.lookaside) is one, judged for the request that began its fill alone; a request
    asking of its age itself (no-cache, max-age, min-fresh) takes it only as a stored answer (proxy.fillhead.answers
    keeps such a request from joining that fill in its own worker)."""
    if stored.request_time < soft_before:
        return False
    if stored.response_time - parse_age(stored.headers) >= asked_at:
        return True
    fresh = freshness_of(stored, now, policy)
    return stored_use(req, stored.headers, fresh, policy, stored.request_time, soft_before) is Use.FRESH


def stale_if_error_allows(req: Headers, resp: Headers, fresh: Freshness, policy: Policy) -> bool:
    """RFC 5861 4: serve stale on an origin error within the stale-if-error window (request or response)."""
    rcc, (scc, _) = parse_cache_control(req), response_cc(resp)
    # RFC 5861 4 defers to RFC 9111 4.2.4: no stale copy against must-revalidate & co. nor against no-cache (the
    # caller passes the origin's failure on: 502 or 504, docs/faults.md).
    if _must_revalidate_when_stale(scc) or scc.no_cache or fresh.staleness > policy.max_stale_ceiling:
        return False
    windows = [w for w in (scc.stale_if_error, rcc.stale_if_error) if w is not None]
    return any(fresh.staleness <= w for w in windows)


def may_stand_in(req: Headers, stale: ObjectMeta | None, policy: Policy, now: float) -> bool:
    """May the `stale` entry a fill revalidates answer in its place should the origin fail it (stale-if-error)?"""
    if stale is None:
        return False
    return stale_if_error_allows(req, stale.headers, freshness_of(stale, now, policy), policy)


# RFC 9111 3.2: Content-Length is never updated from a 304; Content-Range "MAY be ignored" and is, because the
# stored copy's own range (or none) is what its bytes are.
_NOT_UPDATED = frozenset({"content-length", "content-range"})


def _never_stored(resp: Headers) -> frozenset[str]:
    """RFC 9111 3.1: hop-by-hop and Connection-named fields, proxy fields, and those named by a qualified
    no-cache="..." (5.2.2.4) or private="..." (5.2.2.7), in Cache-Control or CDN-Cache-Control."""
    named: set[str] = set()
    for cc in (parse_cache_control(resp), parse_cache_control(resp, field="cdn-cache-control")):
        named.update(cc.private_fields, cc.no_cache_fields)
    return HOP_BY_HOP | _PROXY_FIELDS | connection_tokens(resp) | named


def selects(stored: Headers, fresh304: Headers) -> bool:
    """RFC 9111 4.3.4: does the 304 identify this stored response for update? A strong ETag in it selects only a
    stored response with the same strong ETag ("If none of the stored responses contain the same strong validator,
    then the cache MUST NOT use the new response to update any stored responses"), a weak one one whose ETag matches
    it weakly; without an ETag, its Last-Modified (a weak validator) must be the stored one's. A 304 with no
    validator, or only a Last-Modified where none is stored, is taken as about the one response it validated."""
    etag = (get_first(fresh304, "etag") or "").strip()
    if etag:
        mine = (get_first(stored, "etag") or "").strip()
        return weak_match(mine, etag) if etag.startswith("W/") else strong_match(mine, etag)
    lm, mine_lm = get_first(fresh304, "last-modified"), get_first(stored, "last-modified")
    if lm is None or mine_lm is None:
        return True
    when, mine_when = http_date(lm), http_date(mine_lm)
    return when == mine_when if when is not None and mine_when is not None else lm.strip() == mine_lm.strip()


def merge_304(stored: Headers, fresh304: Headers) -> Headers:
    """RFC 9111 3.2 / 4.3.4: each field of the 304 replaces the stored lines of that name; the others stay.

    Excepted: fields never stored (3.1) and Content-Length / Content-Range. Fields the merged directives now
    name in no-cache="..." or private="..." go too. Set-Cookie is the caller's to strip (strip_for_storage).
    The stored Age goes whether the 304 has one or not: Age is the time since the response was made or validated
    at the origin (5.1), and the copy now ages from this 304 (a stored Age, a parent cache's, kept it old for ever).
    """
    banned = _never_stored(fresh304) | _NOT_UPDATED
    incoming = [(k, v) for k, v in fresh304 if k.lower() not in banned]
    replaced = {k.lower() for k, _ in incoming} | {"age"}
    merged = tuple([(k, v) for k, v in stored if k.lower() not in replaced] + incoming)
    dropped = _never_stored(merged)
    return tuple((k, v) for k, v in merged if k.lower() not in dropped)


def strip_for_storage(resp: Headers, policy: Policy) -> Headers:
    """The fields a stored response keeps: all but those of 3.1 (see _never_stored), and Set-Cookie unless the
    site stores it. Age stays: it feeds current_age (4.2.3)."""
    banned = _never_stored(resp)
    if not policy.store_set_cookie:
        banned |= {"set-cookie"}
    return tuple((k, v) for k, v in resp if k.lower() not in banned)


def invalidates(method: str, status: int) -> bool:
    """RFC 9111 4.4: a non-error response to an unsafe method."""
    return method not in ("GET", "HEAD", "OPTIONS", "TRACE") and 200 <= status < 400
