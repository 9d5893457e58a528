"""What loadtest/fuzz.py feeds each parser, and what it must never do.

A target is a generator (random -> a tuple of arguments) and a check (the arguments -> None). A check calls the
code under test through `call`, so a failure names the exact call that failed; it catches the exceptions the
target documents (the only allowed failures) and raises `Violation` when a documented property does not hold.
Anything else that leaves a check is a finding.
"""

from __future__ import annotations

import email.utils
import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any, TypeVar

from edgecache import config
from edgecache.core import cachecontrol, conditional, freshness, httpdate, keys, manifest, ranges, route
from edgecache.core.headers import Headers
from edgecache.errors import ConfigError
from loadtest import fuzz_heads
from loadtest.fuzzgen import NUMBERS, WEIRD, G

T = TypeVar("T")
Args = tuple[Any, ...]

# The call in progress (function name, arguments): the reproducer of whatever escapes.
LAST: list[tuple[str, Args]] = [("", ())]


class Violation(Exception):
    """A documented property did not hold. `category` names the property (one finding per category)."""

    def __init__(self, category: str, detail: object = "") -> None:
        super().__init__(f"{category}: {detail!r}" if detail != "" else category)
        self.category = category


def call(fn: Callable[..., T], *args: Any) -> T:
    LAST[0] = (f"{fn.__module__}.{fn.__qualname__}", args)
    return fn(*args)


def require(ok: bool, category: str, detail: object = "") -> None:
    if not ok:
        raise Violation(category, detail)


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    default_inputs: int
    gen: Callable[[G], Args]
    check: Callable[..., None]
    allowed: str  # what the target may raise, for the report


_VISIBLE = re.compile(r"[!-~]*")
_FIELD_TEXT = re.compile(r"[ \t]*[\x20-\x7e\t]*[ \t]*")  # what an accepted field value may contain


# --- ranges ----------------------------------------------------------------------------------------------


def _range_header(g: G) -> str:
    def spec() -> str:
        form = g.randrange(4)
        a, b = g.number(), g.number()
        return f"{a}-{b}" if form < 2 else f"-{b}" if form == 2 else f"{a}-"

    unit = g.pick(("bytes", "bytes", "bytes", "Bytes", "BYTES ", " bytes", "items", "", "bytes\x0b", "none"))
    count = 1 + g.randrange(3) if g.chance(0.9) else g.randrange(80)
    header = unit + "=" + g.pick((",", ", ", " ,\t", ",,")).join(spec() for _ in range(count))
    return g.maybe(header, 0.35)


def gen_ranges(g: G) -> Args:
    length = g.pick((0, 1, 2, 10, 100, 1000, 2**20, 2**40, -1)) if g.chance(0.5) else g.int_()
    content_range = g.maybe(f"bytes {g.number()}-{g.number()}/{g.pick(('*', g.number()))}", 0.4)
    if g.chance(0.1):
        content_range = g.maybe(f"bytes */{g.number()}", 0.3)
    return (
        _range_header(g) if g.chance(0.95) else g.pick((None, "")),
        length,
        g.pick((None, g.etag(), g.date_or_junk(), g.junk())),
        g.pick((None, g.etag())),
        g.pick((None, g.date_or_junk())),
        content_range,
        g.pick((None, "video/mp4", g.junk())),
    )


def _check_ranges_result(header: str | None, length: int, result: ranges.RangeResult) -> None:
    if isinstance(result, ranges.Unsatisfiable):
        require(result.length == max(length, 0), "resolve: Unsatisfiable carries the wrong length", result)
        return
    if isinstance(result, ranges.NoRange):
        return
    parts = (result.range,) if isinstance(result, ranges.Single) else result.ranges
    require(isinstance(result, ranges.Single) or len(parts) >= 2, "resolve: Multi with one range", result)
    for p in parts:
        require(0 <= p.first <= p.last < length, "resolve: a range outside the representation", (result, length))
    for a, b in itertools.pairwise(parts):
        require(a.last + 1 < b.first, "resolve: ranges not merged and sorted", result)


def check_ranges(
    header: str | None,
    length: int,
    if_range: str | None,
    etag: str | None,
    last_modified: str | None,
    content_range: str | None,
    content_type: str | None,
) -> None:
    specs = call(ranges.parse_range_header, header)
    if specs is not None:
        assert header is not None
        require(bool(_FIELD_TEXT.fullmatch(header)), "parse_range_header accepted non-ASCII or control text", header)
        require(len(specs) <= ranges.MAX_RANGES, "parse_range_header: more than MAX_RANGES", len(specs))
    result = call(ranges.resolve, header, length)
    require(not (specs is None and not isinstance(result, ranges.NoRange)), "resolve: a range from no specs")
    _check_ranges_result(header, length, result)
    if isinstance(result, ranges.Single | ranges.Multi):
        parts = (result.range,) if isinstance(result, ranges.Single) else result.ranges
        for r in parts[:4]:
            size = 4096 if r.length < 2**32 else 2**20 * 64
            indices = call(ranges.slice_indices, r, size)
            if len(indices) <= 64:
                bounds = [call(ranges.slice_bounds, i, size, length) for i in indices]
                tiled = bounds[0].first <= r.first and bounds[-1].last >= r.last
                require(tiled, "slice_bounds do not cover the range", (r, size))
        if isinstance(result, ranges.Multi):
            layout = call(ranges.multipart_layout, result.ranges, length, content_type, "B0UNDARY")
            body = sum(len(pre) + r.length for pre, r in layout.parts) + len(layout.epilogue)
            require(layout.content_length == body, "multipart_layout: Content-Length is not the body's")
    call(ranges.if_range_allows, if_range, etag, last_modified)
    cr = call(ranges.parse_content_range, content_range)
    if cr is not None:
        assert content_range is not None
        require(bool(_FIELD_TEXT.fullmatch(content_range)), "parse_content_range accepted non-ASCII", content_range)
        ok = cr.first is None or (
            cr.last is not None and cr.first <= cr.last and (cr.length is None or cr.last < cr.length)
        )
        require(ok, "parse_content_range: a self-contradictory range", cr)


# --- Cache-Control ---------------------------------------------------------------------------------------

_DIRECTIVES = (
    "max-age",
    "s-maxage",
    "no-store",
    "no-cache",
    "private",
    "public",
    "must-revalidate",
    "proxy-revalidate",
    "must-understand",
    "immutable",
    "no-transform",
    "stale-while-revalidate",
    "stale-if-error",
    "max-stale",
    "min-fresh",
    "only-if-cached",
)


def _directives(g: G) -> str:
    def one() -> str:
        name = g.pick(_DIRECTIVES) if g.chance(0.85) else g.token(6)
        if g.chance(0.15):
            name = g.pick((name.upper(), g.confuse(name)))
        x = g.rand()
        if x < 0.4:
            return name
        if x < 0.7:
            arg = g.number()
        elif x < 0.85:
            arg = g.quoted(g.pick((g.number(), ", ".join(g.token(6) for _ in range(g.randrange(4))))))
        else:
            arg = g.junk(6)
        params = f";{g.token(4)}={g.number()}" if g.chance(0.05) else ""
        return f"{name}{g.ows()}={g.ows()}{arg}{params}"

    value = g.pick((",", ", ", " , ")).join(one() for _ in range(1 + g.randrange(4)))
    return g.maybe(value, 0.25)


_CC_NAMES = ("Cache-Control", "CDN-Cache-Control", "Pragma", "Expires", "X-Other")


def gen_cachecontrol(g: G) -> Args:
    return (g.headers(_CC_NAMES, lambda n: "no-cache" if n == "pragma" and g.chance(0.5) else _directives(g), 4),)


def check_cachecontrol(headers: Headers) -> None:
    for field in ("cache-control", "cdn-cache-control"):
        cc = call(cachecontrol.parse_cache_control, headers, field)
        for f in ("max_age", "s_maxage", "stale_while_revalidate", "stale_if_error", "max_stale", "min_fresh"):
            v = getattr(cc, f)
            require(v is None or 0 <= v <= cachecontrol.DELTA_MAX, "a delta outside 0..2**31", (f, v))
        for names in (cc.no_cache_fields, cc.private_fields):
            require(list(names) == sorted(set(names)), "qualified field names not sorted and unique", names)
    call(cachecontrol.parse_pragma_no_cache, headers)
    cdn = [v for k, v in headers if k.lower() == "cdn-cache-control"]
    if call(cachecontrol.valid_sf_directives, cdn):
        for v in cdn:
            require(bool(_FIELD_TEXT.fullmatch(v)), "valid_sf_directives accepted non-ASCII text", v)
    call(freshness.response_cc, headers)


# --- cache keys ------------------------------------------------------------------------------------------

_SEGMENTS = (
    *("a", "b", "", ".", "..", "%2e", "%2E%2e", ".%2e", "%41", "%7e", "~", "%2F", "%", "%zz", "%0", "%00"),
    *("%25", "%%34%31", "a;b", "a%3Fb", "%23", "\u00e9", "%C3%A9", "x" * 50),
)


def _target(g: G) -> str:
    path = "/" + "/".join(g.pick(_SEGMENTS) for _ in range(g.randrange(6)))
    if g.chance(0.5):
        path += "?" + "&".join(f"{g.pick(('a', 'b', 'itag', g.token(4)))}={g.pick(_SEGMENTS)}" for _ in range(3))
    if g.chance(0.05):
        path += "#" + g.token(4)
    if g.chance(0.02):
        path = path * 500
    if g.chance(0.03):
        path += g.pick(WEIRD)
    return g.maybe(path, 0.3, _SEGMENTS)


def gen_keys(g: G) -> Args:
    keep = g.pick((("*",), (), ("a", "b"), ("itag",), (g.token(3),)))
    return (g.pick(("site", "v", g.token())), g.pick(("video.test", "A.Test", g.junk())), _target(g), keep)


def check_keys(site: str, host: str, target: str, keep: tuple[str, ...]) -> None:
    try:
        key = call(keys.make_key, site, host, target, keep)
    except keys.BadTarget:  # documented: the reason for a 400
        return
    require(key.path.startswith("/"), "make_key: path not absolute", key)
    for part in (key.path, key.query):
        require(bool(_VISIBLE.fullmatch(part)), "make_key: control characters, spaces or non-ASCII kept", part)
    segments = key.path.split("/")
    require("." not in segments and ".." not in segments, "make_key: dot segments kept", key.path)
    again = call(keys.normalise_target, key.target)
    require(again == (key.path, key.query), "normalise_target is not idempotent", (key.target, again))
    same = call(keys.make_key, site, host, key.target, keep)
    require(same.primary == key.primary, "make_key of the normalised target gives another primary", same)


_VARY = ("Accept", "Accept-Encoding", "accept-language", "X-Device", "Cookie", "*", "")


def gen_variant(g: G) -> Args:
    vary = tuple(g.pick(_VARY) if g.chance(0.9) else g.junk(6) for _ in range(g.randrange(4)))
    req = g.headers(_VARY, lambda n: g.maybe(", ".join(g.token(5) for _ in range(g.randrange(3))), 0.3), 5)
    head = f"{g.token(8)} {g.pick(('0.0', repr(g.timestamp()), g.number(), 'nan', ''))}"
    data = "\n".join((head, *vary)).encode("latin-1", "replace")
    if g.chance(0.3):
        data = g.mutate(data.decode("latin-1")).encode("utf-8", "surrogatepass")
    text = g.junk(20) if g.chance(0.5) else g.pick(("", "\udc80\udcff", "\ud800", "a\udfffb", "\U0001f600"))
    return (vary, req, data, g.pick(("", "purge-scope", g.junk(4))), text)


def check_variant(vary: tuple[str, ...], req: Headers, data: bytes, scope: str, text: str) -> None:
    call(keys.variant, vary, req)
    record = call(keys.PrimaryRecord.from_bytes, data)
    again = call(keys.PrimaryRecord.from_bytes, call(record.to_bytes))
    same = again.generation == record.generation and again.vary == record.vary
    same = same and (again.soft_before == record.soft_before or math.isnan(record.soft_before))
    require(same, "PrimaryRecord does not survive to_bytes/from_bytes", (record, again))
    entry = call(keys.entry_key, "site|host|/p", record, req, scope)
    for s in (entry, text):
        d = call(keys.digest, s)
        require(len(d) == 32 and all(c in "0123456789abcdef" for c in d), "digest is not 32 hex digits", d)


# --- HTTP dates ------------------------------------------------------------------------------------------


def gen_httpdate(g: G) -> Args:
    t = float(g.randrange(0, 253402300800))
    return (g.date_or_junk() if g.chance(0.9) else g.mutate(g.http_date(), pool=NUMBERS), t)


def check_httpdate(value: str, t: float) -> None:
    parsed = call(httpdate.parse_http_date, value)
    if parsed is not None:
        require(math.isfinite(parsed), "parse_http_date: not a finite number", parsed)
        require(bool(_FIELD_TEXT.fullmatch(value)), "parse_http_date accepted non-ASCII or control text", value)
    formatted = email.utils.formatdate(t, usegmt=True)
    require(call(httpdate.parse_http_date, formatted) == t, "parse_http_date misreads an IMF-fixdate", formatted)


# --- hosts -----------------------------------------------------------------------------------------------

_ROUTER = route.Router([(("video.test", "*.video.test"), "v"), (("*",), "any")])


def gen_route(g: G) -> Args:
    x = g.rand()
    if x < 0.5:
        host = ".".join(g.token(8).lower() for _ in range(1 + g.randrange(4)))
    elif x < 0.7:
        host = ".".join(str(g.randrange(300)) for _ in range(4))
    else:
        host = "[" + ":".join(g.pick(("", "1", "db8", "ffff", "2001")) for _ in range(g.randrange(9))) + "]"
    if g.chance(0.4):
        host += ":" + g.number()
    if g.chance(0.1):
        host += "."
    return (g.maybe(host, 0.4),)


def check_route(value: str) -> None:
    host = call(route.normalise_host, value)
    if host is not None:
        require(bool(_FIELD_TEXT.fullmatch(value)), "normalise_host accepted non-ASCII or control text", value)
        ok = re.fullmatch(r"[a-z0-9.-]+|\[[0-9a-f:.]+\]", host) is not None and not host.endswith(".")
        require(ok and len(host) <= 255, "normalise_host: not a lower-case host", host)
        call(_ROUTER.match, host)


# --- conditional requests --------------------------------------------------------------------------------

_COND = ("If-None-Match", "If-Match", "If-Modified-Since", "If-Unmodified-Since", "Range")


def gen_conditional(g: G) -> Args:
    def value(name: str) -> str:
        return g.etag_list() if name.endswith("match") else g.date_or_junk()

    return (
        g.headers(_COND, value, 4),
        g.pick((None, g.etag())),
        g.pick((None, g.date_or_junk())),
        g.pick((None, g.date_or_junk())),
    )


def check_conditional(req: Headers, etag: str | None, last_modified: str | None, date: str | None) -> None:
    modified = call(conditional.not_modified, req, etag, last_modified, date)
    require(isinstance(modified, bool), "not_modified: not bool")
    failed = call(conditional.precondition_failed, req, etag, last_modified)
    require(isinstance(failed, bool), "not a bool")
    unread = call(conditional.unreadable, req, etag)
    require(isinstance(unread, bool), "unreadable: not bool")
    # An unreadable If-Match or If-None-Match gets the whole answer: never a 304 or 412 of its own doing.
    if unread and call(conditional.unreadable, [(k, v) for k, v in req if k.lower() != "if-match"], etag):
        require(not modified, "an unreadable If-None-Match answered 304")
    if unread and call(conditional.unreadable, [(k, v) for k, v in req if k.lower() != "if-none-match"], etag):
        require(not failed, "an unreadable If-Match answered 412")


# --- freshness and storability ---------------------------------------------------------------------------

_RESP = (
    *("Cache-Control", "CDN-Cache-Control", "Expires", "Date", "Last-Modified", "Age", "Vary", "Set-Cookie"),
    *("Connection", "ETag", "Content-Length", "Pragma", "Keep-Alive"),
)
_REQ = ("Cache-Control", "Pragma", "Authorization", "If-None-Match")
_POLICIES = (
    freshness.Policy(),
    freshness.Policy(min_ttl=60.0, max_ttl=3600.0, store_set_cookie=True),
    freshness.Policy(heuristic_fraction=1.0, heuristic_max=0.0, max_stale_ceiling=0.0),
)


def _field_value(g: G, name: str) -> str:
    if name in ("cache-control", "cdn-cache-control"):
        return _directives(g)
    if name in ("expires", "date", "last-modified"):
        return g.date_or_junk()
    if name == "age":
        return g.maybe(g.number(), 0.2)
    if name in ("vary", "connection"):
        return ", ".join(g.pick(("*", "accept", "keep-alive", "Set-Cookie", g.token(5))) for _ in range(2))
    if name in ("etag", "if-none-match"):
        return g.etag_list()
    return g.maybe(g.token(), 0.2)


def gen_freshness(g: G) -> Args:
    now = g.timestamp()
    request_time = now - g.randrange(0, 100_000) if g.chance(0.8) else g.timestamp()
    response_time = request_time + g.randrange(0, 10) if g.chance(0.8) else g.timestamp()
    return (
        g.pick(("GET", "GET", "HEAD", "POST", "get", g.token(4))),
        g.pick((200, 203, 206, 302, 304, 404, 500, 0, 99, 600, 999)) if g.chance(0.8) else g.int_(),
        g.headers(_REQ, lambda n: _field_value(g, n), 3),
        g.headers(_RESP, lambda n: _field_value(g, n), 8),
        g.headers(_RESP, lambda n: _field_value(g, n), 4),
        request_time,
        response_time,
        now,
        g.randrange(len(_POLICIES)),
    )


def check_freshness(
    method: str,
    status: int,
    req: Headers,
    resp: Headers,
    resp304: Headers,
    request_time: float,
    response_time: float,
    now: float,
    policy_index: int,
) -> None:
    policy = _POLICIES[policy_index]
    call(freshness.storable, method, status, req, resp, policy)
    fresh = call(freshness.evaluate, resp, status, request_time, response_time, now, policy)
    require(fresh.lifetime >= 0 and fresh.age >= 0, "evaluate: a negative lifetime or age", fresh)
    require(math.isfinite(fresh.lifetime) and math.isfinite(fresh.age), "evaluate: not finite", fresh)
    call(freshness.usable, req, resp, fresh, policy)
    call(freshness.stale_if_error_allows, req, resp, fresh, policy)
    merged = call(freshness.merge_304, resp, resp304)
    stored = call(freshness.strip_for_storage, merged, policy)
    require(all(k.lower() not in ("connection", "keep-alive") for k, _ in stored), "hop-by-hop field stored", stored)
    call(freshness.invalidates, method, status)


# --- manifests -------------------------------------------------------------------------------------------

_URIS = (
    *("seg.ts", "a/b.m3u8", "/abs/x.m4s", "http://other.test/x", "//cdn.test/x", "?q=1", "../../x", ""),
    *("//[", "http://[::1]/x", "http://[x]/", "http://a:99999999/x", "%zz", "\ud800", "a b", "mailto:x"),
)


def _uri(g: G) -> str:
    return g.maybe(g.pick(_URIS), 0.2)


def gen_hls(g: G) -> Args:
    lines = ["#EXTM3U" if g.chance(0.95) else g.pick(("", "#EXTM3U8", " #EXTM3U"))]
    for _ in range(g.randrange(12)):
        x = g.rand()
        if x < 0.3:
            lines += [f"#EXT-X-STREAM-INF:BANDWIDTH={g.number()}", _uri(g)]
        elif x < 0.6:
            lines += [f"#EXTINF:{g.number()},", _uri(g)]
        elif x < 0.8:
            tag = g.pick(("#EXT-X-MEDIA:TYPE=AUDIO,", "#EXT-X-MAP:", "#EXT-X-I-FRAME-STREAM-INF:"))
            lines.append(f'{tag}URI="{_uri(g)}"')
        else:
            lines.append(g.pick(("#EXT-X-ENDLIST", "", "#", _uri(g), g.junk())))
    text = g.pick(("\n", "\r\n", "\r")).join(lines)
    base = g.pick(("http://video.test/v/master.m3u8", "https://a.test/", "http://[::1]:8080/x.m3u8", ""))
    return (g.maybe(text, 0.25), base)


def check_hls(text: str, base: str) -> None:
    playlist = call(manifest.parse_hls, text, base)
    if playlist is not None:
        require(all(isinstance(u, str) for u in (*playlist.variants, *playlist.segments)), "parse_hls: not str")


def _attr(g: G, good: Callable[[], str]) -> str:
    """A good value mostly; else junk, and rarely any number (a big count or repeat costs the parser a second)."""
    if g.chance(0.85):
        return good()
    if g.chance(0.03):
        return g.number()
    return g.pick(("", "-1", "0", "x", "1.5", " 3", "+3", "\u0661", "1_0", "9" * 19, g.junk(5)))


def _template(g: G) -> str:
    media = g.pick(("seg-$Number$.m4s", "$RepresentationID$/$Time$.m4s", "s$Number%05d$.m4s", "x$$y$Bandwidth$"))
    if g.chance(0.1):
        media = g.pick(("s$Number%0" + g.number() + "d$", "$Number$" + _uri(g), _uri(g)))
    # Segments of 1-9 s, so a period yields a handful; now and then a timescale mismatch yields thousands and
    # more (MAX_SEGMENTS, then None), which takes the parser a second: rarely, or the target crawls.
    scale = g.pick((1, 1000, 90000))
    unit = scale if g.chance(0.98) else g.pick((1, 1000, 90000))
    attrs = {
        "media": media,
        "initialization": g.pick(("init-$RepresentationID$.mp4", _uri(g))),
        "startNumber": _attr(g, lambda: str(g.randrange(0, 10))),
        "timescale": _attr(g, lambda: str(scale)),
        "duration": _attr(g, lambda: str(g.randrange(1, 10) * unit)),
    }
    body = ""
    if g.chance(0.4):
        entries = (
            f'<S t="{_attr(g, lambda: str(g.randrange(100)))}" d="{_attr(g, lambda: str(g.randrange(1, 5)))}"'
            f' r="{_attr(g, lambda: str(g.randrange(-1, 5)))}"/>'
            for _ in range(1 + g.randrange(3))
        )
        body = "<SegmentTimeline>" + "".join(entries) + "</SegmentTimeline>"
    shown = " ".join(f'{k}="{v}"' for k, v in attrs.items() if g.chance(0.85))
    return f"<SegmentTemplate {shown}>{body}</SegmentTemplate>"


def _xml_text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


def gen_dash(g: G) -> Args:
    def duration() -> str:
        return g.pick((f"PT{g.randrange(0, 60)}S", f"PT{g.randrange(0, 3)}M{g.randrange(60)}.5S", "P0D", "PT"))

    def rep(i: int) -> str:
        inner = ""
        x = g.rand()
        if x < 0.5:
            inner = _template(g)
        elif x < 0.75:
            segs = "".join(f'<SegmentURL media="{_xml_text(_uri(g))}"/>' for _ in range(g.randrange(4)))
            inner = f'<SegmentList><Initialization sourceURL="{_xml_text(_uri(g))}"/>{segs}</SegmentList>'
        elif x < 0.9:
            inner = f"<BaseURL>{_xml_text(_uri(g))}</BaseURL>"
        return f'<Representation id="r{i}" bandwidth="{g.number()}">{inner}</Representation>'

    def aset() -> str:
        shared = _template(g) if g.chance(0.2) else ""
        base = f"<BaseURL>{_xml_text(_uri(g))}</BaseURL>" if g.chance(0.3) else ""
        return f"<AdaptationSet>{base}{shared}{''.join(rep(i) for i in range(1 + g.randrange(3)))}</AdaptationSet>"

    total = _attr(g, duration) if g.chance(0.99) else "PT" + g.pick(NUMBERS) + "S"
    periods = "".join(
        f'<Period duration="{_attr(g, duration)}">{"".join(aset() for _ in range(1 + g.randrange(2)))}</Period>'
        for _ in range(1 + g.randrange(2))
    )
    ns = ' xmlns="urn:mpeg:dash:schema:mpd:2011"' if g.chance(0.5) else ""
    text = f'<?xml version="1.0"?><MPD{ns} mediaPresentationDuration="{total}">{periods}</MPD>'
    reps = frozenset(g.pick(((), ("r0",), ("r1", "zz")))) if g.chance(0.3) else frozenset()
    return (g.maybe(text, 0.15), g.pick(("http://video.test/v/a.mpd", "https://a.test/", "")), reps)


def check_dash(text: str, base: str, reps: frozenset[str]) -> None:
    urls = call(manifest.parse_dash, text, base, reps)
    if urls is not None:
        require(len(urls) <= manifest.MAX_SEGMENTS, "parse_dash: more than MAX_SEGMENTS URLs", len(urls))


# --- configuration ---------------------------------------------------------------------------------------

# The directory the config targets work in (prepare() sets it): the TOML file and the token files it may name.
FILES: list[Path] = []
_TOKEN_FILES = ("good.token", "binary.token", "a-directory", "missing.token", "/nonexistent/abs.token", "a\x00b")


def prepare(directory: Path) -> None:
    """Make the files the config targets name, and lower the DASH expansion limit 50-fold: the limit is still
    reached (and its path fuzzed) by the odd manifest, which then costs 10 ms instead of half a second."""
    manifest.MAX_SEGMENTS = 2_000
    (directory / "good.token").write_text("0123456789abcdef0123\n", encoding="utf-8")
    (directory / "binary.token").write_bytes(b"\xff\xfe" * 16)
    (directory / "a-directory").mkdir(exist_ok=True)
    FILES[:] = [directory]


_TOML_SCALARS: tuple[object, ...] = (
    0,
    1,
    -1,
    2**63 - 1,
    10**400,
    1.5,
    -0.0,
    math.inf,
    -math.inf,
    math.nan,
    True,
    False,
    "",
    "x",
    "256MiB",
    "1g",
    "4096",
    "9" * 400 + "k",
    "1.5GB",
    "127.0.0.1:8080",
    "[::1]:0",
    "0.0.0.0:65536",
    ":80",
    "http://10.0.0.1:8080",
    "http://[::1",
    "ftp://x",
    "http://a/?q",
    "video.test",
    "*.video.test",
    "*",
    "a\x00b",
    "a\nb",
    "10.0.0.0/8",
    "2001:db8::/129",
    datetime(2024, 1, 1, tzinfo=UTC),
    date(2024, 1, 1),
    time(12, 0),
)
# The config's own key lists (sorted: the generator must not depend on set order), less the tables and arrays
# config_doc() builds itself.
_KEYS = {
    section: tuple(sorted(config.KEYS[section] - {"nodes", "tokens"}))
    for section in ("server", "cache", "origin", "demo", "admin", "log", "cluster")
}
_SITE_KEYS = tuple(sorted(config.KEYS["sites"] - {"cache"}))
_POLICY_KEYS = tuple(sorted(config.KEYS["sites.cache"]))
_TOKEN_KEYS = tuple(sorted(config.KEYS["admin.tokens"]))
_NODE_KEYS = tuple(sorted(config.KEYS["cluster.nodes"]))


def _value(g: G, depth: int = 0) -> object:
    x = g.rand()
    if x < 0.75 or depth > 2:
        return g.pick(_TOML_SCALARS) if g.chance(0.8) else g.junk(8)
    if x < 0.9:
        return [_value(g, depth + 1) for _ in range(g.randrange(4))]
    return {g.token(5): _value(g, depth + 1) for _ in range(g.randrange(3))}


def _table(g: G, known: tuple[str, ...], good: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k in known:
        if g.chance(0.4):
            out[k] = good[k] if k in good and g.chance(0.5) else _value(g)
    if g.chance(0.1):
        out[g.token(6)] = _value(g)
    return out


_GOOD: dict[str, object] = {
    "listen": ["127.0.0.1:8080"],
    "workers": 2,
    "dir": "cache",
    "memory": "64MiB",
    "slice": "1MiB",
    "disk": "1GiB",
    "tiers": "exclusive",
    "self": "n1",
    "name": "v",
    "hosts": ["video.test"],
    "origins": ["http://10.0.0.1:8080"],
    "token": "0123456789abcdef0",
    "role": "operator",
    "sites": ["v"],
    "interval": 1.0,
}


def config_doc(g: G) -> dict[str, object]:
    """A parsed-TOML-shaped document: the real sections and keys, each value good, wrong-typed or odd."""
    doc: dict[str, object] = {}
    for section, known in _KEYS.items():
        if g.chance(0.35):
            doc[section] = _table(g, known, _GOOD) if g.chance(0.95) else _value(g)
    sites: list[object] = []
    for _ in range(g.randrange(3)):
        site = _table(g, _SITE_KEYS, _GOOD)
        for k in ("name", "hosts", "origins"):
            if g.chance(0.8):
                site[k] = _GOOD[k]
        if g.chance(0.3):
            site["cache"] = _table(g, _POLICY_KEYS, _GOOD)
        sites.append(site if g.chance(0.97) else _value(g))
    if sites or g.chance(0.2):
        doc["sites"] = sites
    if g.chance(0.2):
        tokens = [_table(g, _TOKEN_KEYS, _GOOD) for _ in range(1 + g.randrange(2))]
        for t in tokens:
            if g.chance(0.5):
                t.pop("token", None)
                t["token_file"] = g.pick(_TOKEN_FILES)
        admin = doc.setdefault("admin", {})
        if isinstance(admin, dict):
            admin["tokens"] = tokens
    cluster = doc.get("cluster")
    if isinstance(cluster, dict) and g.chance(0.7):
        nodes: list[dict[str, object]] = []
        for i in range(g.randrange(4)):
            node: dict[str, object] = {"id": f"n{i}", "address": f"127.0.0.1:{8000 + i}"}
            nodes.append(_table(g, _NODE_KEYS, node) if g.chance(0.3) else node)
        cluster["nodes"] = nodes
    return doc


def _check_problems(exc: ConfigError, source: str) -> None:
    require(bool(exc.problems), "ConfigError without problems")
    for p in exc.problems:
        file, sep, rest = p.partition(": ")
        key, sep2, message = rest.partition(": ")
        ok = file == source and sep and sep2 and key and message.strip() and "\n" not in p
        require(bool(ok), "a ConfigError line that is not 'file: key: problem' on one line", p)


def _check_config(cfg: config.Config) -> None:
    def walk(value: object, where: str) -> None:
        if isinstance(value, float):
            require(not math.isnan(value), "a NaN setting accepted", where)
        elif isinstance(value, str | Path):
            require("\x00" not in str(value), "a setting with a NUL accepted", where)
        elif isinstance(value, tuple):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")
        elif is_dataclass(value) and not isinstance(value, type):
            for f in fields(value):
                walk(getattr(value, f.name), f"{where}.{f.name}")

    walk(cfg, "config")
    for site in cfg.sites:
        ok = site.origin_host is None or re.fullmatch(r"[!-~]+", site.origin_host) is not None
        require(ok, "an origin_host with spaces or control characters accepted", site.origin_host)


def check_config_dict(doc: dict[str, Any]) -> None:
    try:
        cfg = call(config.build, doc, "fuzz.toml", FILES[0])
    except ConfigError as exc:  # documented: every problem as 'file: key: problem'
        _check_problems(exc, "fuzz.toml")
        return
    _check_config(cfg)


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int | datetime | date | time):
        return v.isoformat() if not isinstance(v, int) else str(v)
    if isinstance(v, str):
        return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in v) + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f'"{k}" = {_toml_value(x)}' for k, x in v.items()) + "}"
    return '""'


def to_toml(doc: dict[str, object]) -> str:
    return "\n".join(f'"{k}" = {_toml_value(v)}' for k, v in doc.items())


_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
SEEDS = [p.read_text(encoding="utf-8") for p in sorted(_CONFIG_DIR.glob("**/*.toml"))]
_TOML_JUNK = ("[", "]", "[[", "]]", "=", '"', "'''", '"""', "\n", "#", "{", "}", ".", "inf", "nan", "1e999", "9" * 400)


def gen_config_toml(g: G) -> Args:
    text = g.pick(SEEDS) if SEEDS and g.chance(0.5) else to_toml(config_doc(g))
    for _ in range(g.randrange(3)):
        i = g.randrange(len(text) + 1)
        text = text[:i] + g.pick(_TOML_JUNK) + text[i:]
    if g.chance(0.01):
        text = "a = " + "[" * g.pick((100, 1000, 5000)) + "]" * 3
    return (g.maybe(text, 0.3, SEEDS),)


def check_config_toml(text: str) -> None:
    path = FILES[0] / "fuzz.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")  # lone surrogates: not UTF-8 on disk
    LAST[0] = ("edgecache.config.load", (f"<a file holding {text!r}>",))
    try:
        cfg = config.load(path)
    except ConfigError as exc:  # documented: every problem as 'file: key: problem'
        _check_problems(exc, str(path))
        return
    _check_config(cfg)


def gen_config_dict(g: G) -> Args:
    return (config_doc(g),)


def check_heads(head: bytes) -> None:
    """The fast-path edge and the full-path edge give the same statuses (loadtest/fuzz_heads.py)."""
    LAST[0] = ("loadtest.fuzz_heads.compare", (head,))
    fast, full = fuzz_heads.compare(head)
    if fast != full:
        first = next(i for i, (a, b) in enumerate(zip([*fast, None], [*full, None], strict=False)) if a != b)
        pair = (fast[first] if first < len(fast) else None, full[first] if first < len(full) else None)
        raise Violation(f"fast path {pair[0]} where the full path gives {pair[1]}", f"{fast} vs {full}")


TARGETS = (
    Target("ranges", 150_000, gen_ranges, check_ranges, "nothing"),
    Target("cachecontrol", 100_000, gen_cachecontrol, check_cachecontrol, "nothing"),
    Target("keys", 120_000, gen_keys, check_keys, "keys.BadTarget from make_key/normalise_target"),
    Target("variant", 60_000, gen_variant, check_variant, "nothing"),
    Target("httpdate", 100_000, gen_httpdate, check_httpdate, "nothing"),
    Target("route", 80_000, gen_route, check_route, "nothing"),
    Target("conditional", 60_000, gen_conditional, check_conditional, "nothing"),
    Target("freshness", 120_000, gen_freshness, check_freshness, "nothing"),
    Target("hls", 80_000, gen_hls, check_hls, "nothing"),
    Target("dash", 40_000, gen_dash, check_dash, "nothing"),
    Target("config-toml", 40_000, gen_config_toml, check_config_toml, "ConfigError, every line 'file: key: problem'"),
    Target("config-dict", 60_000, gen_config_dict, check_config_dict, "ConfigError, every line 'file: key: problem'"),
    Target("heads", 100_000, fuzz_heads.gen_heads, check_heads, "nothing (a status that differs is a finding)"),
)
