"""Deciding, from a request head's bytes alone, whether the fast path answers it: the memo of decisions, the
whole-object answers single ranges are cut from, and the parse behind both (see fastpath).

A head is parsed by aiohttp's own request parser, with the limits aiohttp's server applies, so the fast path
refuses (hands to aiohttp, which answers 400) exactly the heads the full path refuses: too many fields, over-long
lines or fields, odd bytes, repeated fields that must occur once, version strings. No copy of those rules lives
here; loadtest/fuzz_heads.py and tests/e2e/test_fast_path_differential.py check the two paths agree.

A head is parsed and looked up (find_hit) once; the same head bytes then get the same answer while everything it
was decided from is unchanged (Decider._current). Nothing here does I/O or waits: a decision that needs the disk tier
comes back as a Load for the connection to fetch first.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace

from edgecache import metrics
from edgecache.core import admit, ranges
from edgecache.core.admit import Reply
from edgecache.core.entry import ObjectMeta
from edgecache.core.keepalive import KeepAlive
from edgecache.core.memo import Memo, Pool, Seen, generation, head_cost
from edgecache.core.status import CacheStatus, MissCause, of_304, of_fill
from edgecache.proxy import encode, headparse, observe, rangecut
from edgecache.proxy.fill import Fill
from edgecache.proxy.forwardmemo import ForwardMemo, split_hop
from edgecache.proxy.heldslices import held_slices as _slices
from edgecache.proxy.heldslices import slices_of
from edgecache.proxy.hit import STATUS_OF_USE, Hit, as_fetched, copied
from edgecache.proxy.lookup import Cold, Load, Pass, Validated, find_cold, find_hit
from edgecache.proxy.prepared import Prepared, for_hop, head_at
from edgecache.proxy.respond import ranges_apply
from edgecache.proxy.route import HOT, Elsewhere, Forward, Here, Refused, addressed, unversioned
from edgecache.proxy.shared import Shared

log = logging.getLogger(__name__)

_MEMO_HEAD = 2048  # request heads longer than this are not memoised
# The pool of bytes a worker's memos hold together (config.CacheSettings.memo_bytes) where no configuration gives
# one; each memo's generations hold what core.memo.generation gives for its pool, the memo at most twice that.
MEMO_BYTES = 16 * 2**20


_HIT_WAY = observe.upstream(CacheStatus.HIT, metrics.Sources())  # a fresh hit, every slice in hand: "cache"


class _FullParse:
    """_ranged() cannot cut this head's answer from a whole one: parse it in full."""


_FULL_PARSE = _FullParse()


class Decider:
    """The decisions of one worker's fast path, shared by its connections."""

    def __init__(self, shared: Shared, date: Callable[[], bytes], memo_bytes: int = MEMO_BYTES) -> None:
        self.shared = shared
        self.date = date  # the Date field's value now
        self.pool = pool = Pool(memo_bytes)  # the bytes all the memos below hold together at most
        self.memo: Memo[bytes, Prepared] = _memo(pool)  # request head -> its answer, while still valid
        self.wholes: Memo[bytes, Prepared] = _memo(pool)  # head without Range -> whole-object basis
        self.cuts: Memo[bytes, Prepared] = _memo(pool)  # a single-range head -> the answer cut for it (_ranged)
        self.seen = Seen(generation(memo_bytes)[0])  # the single-range heads cut lately: a second time, the cut is kept
        self.hopped: Memo[bytes, Prepared] = _memo(pool)  # a peer's head without its hop field -> the answer it had
        self.forwards = ForwardMemo(shared, pool)
        self.parser = headparse.Parser()

    def answer(
        self,
        head: bytes,
        client: str,
        admitted: bool = False,
        placed: Here | None = None,
        named: tuple[str, ...] | None = None,
    ) -> Prepared | Load | Forward | Refused | Pass | None:
        """The answer to this head if it is a fresh hit, the owner it goes to, or its refusal (core.admit); None for
        anything the fast path leaves to aiohttp. `admitted`: the rate limiter let this request in already (its
        miss's fill was started for it: find_cold), so it is not asked again. `placed`: where that fill put it
        (coldmiss.Started.placed): the request is this node's, answered from it whoever owns the key now. `named`:
        the Vary another variant's answer to its fill named (FastPath.named), which it is looked up under again, as
        find_cold() fills it under: never from the memo, whose answers were decided without it.

        The same head bytes ask the same question, so a hit decided moments ago is reused while everything it
        was decided from is unchanged (_current); only the client's address is checked again.
        """
        shared = self.shared
        if shared.overloaded:
            return self._overloaded(head)
        copy = False
        if shared.cluster is not None:
            hop = split_hop(head)
            if hop is not None:
                return self._hopped(hop[1], hop[0], client, admitted)
            forward = None if placed else self.forwards.get(head, client, admitted)
            if isinstance(forward, Forward | Refused):
                return forward
            copy = forward == HOT  # decided for this node's copy, the gate not asked a second time
        if named is not None:
            decided = self._decide(head, client, admitted=admitted, copy=copy, placed=placed, named=named)
            return None if isinstance(decided, Elsewhere) else decided
        now = time.time()
        prepared = self._current(self.memo, head, now)
        if prepared is None and self.cuts:
            prepared = self._current(self.cuts, head, now)
        if prepared is not None:
            reply = prepared.hit.refusal(client, now)
            limiter = shared.limiter
            if reply is None and limiter is not None and not admitted:
                reply = limiter.refusal(client, time.monotonic())
            if reply is not None:
                return _refused(prepared, reply)
            shared.engine.store.touch_meta(prepared.hit.req.entry_key, prepared.hit.req.primary)
            return prepared
        ranged = self._ranged(head, client, now)
        if not isinstance(ranged, _FullParse):
            return ranged
        decided = self._decide(head, client, admitted=admitted, copy=copy, placed=placed)
        return None if isinstance(decided, Elsewhere) else decided

    def _hopped(
        self, head: bytes, field: str, client: str, admitted: bool
    ) -> Prepared | Load | Forward | Refused | Pass | None:
        """A peer's request: `head` without its hop `field`, which differs on every request (time, id, signature)
        and is checked against the remembered answer's method and key, as find_hit() would check it."""
        now = time.time()
        prepared = self._current(self.hopped, head, now)
        cluster = self.shared.cluster
        assert cluster is not None
        if prepared is not None:
            hop = cluster.honoured([field], prepared.method, prepared.hit.req.primary)
            if hop is None:  # not vouched for: a client's request, decided as one (never sent back: route.routed)
                decided = self._decide(head, client, hop_field=field, admitted=admitted)
                return None if isinstance(decided, Elsewhere) else decided
            self.shared.engine.store.touch_meta(prepared.hit.req.entry_key, prepared.hit.req.primary)
            head_at(prepared, now)  # the remembered answer's head as of now, which its copy takes: made once a second
            return for_hop(prepared, hop.viewer, not hop.lookaside)
        decided = self._decide(head, client, hop_field=field, admitted=admitted)
        if isinstance(decided, Prepared) and decided.hit.viewer is not None and decided.status is CacheStatus.HIT:
            _remember(self.hopped, head, decided)
        return None if isinstance(decided, Elsewhere) else decided

    def _current(self, memo: Memo[bytes, Prepared], head: bytes, now: float) -> Prepared | None:
        """The remembered answer to this head while it is still the answer: decided fresh, one with an age_span is,
        until its freshness for its request ends (fresh_until), its Age written as it is sent (head_at); any
        other until its decision's moment passes (Hit.still). Either only while nothing but the clock moved."""
        prepared = memo.get(head)
        if prepared is None:
            return None
        hit = prepared.hit
        if now < (hit.valid_until if prepared.age_span is None else hit.fresh_until) and hit.same_basis(self.shared):
            return prepared
        del memo[head]
        return None

    def _decide(
        self,
        head: bytes,
        client: str,
        basis: bool = False,
        hop_field: str | None = None,
        admitted: bool = False,
        copy: bool = False,
        placed: Here | None = None,
        named: tuple[str, ...] | None = None,
    ) -> Prepared | Load | Forward | Elsewhere | Refused | Pass | None:
        """Parse and look up the head from scratch; remember a hit's answer for the same head (not one `named`).

        A `basis` is the whole-object answer single ranges are cut from: kept apart from the memo (it has no
        slices, and another node's object is Elsewhere to it), and never sent itself.
        """
        memo = self.wholes if basis else self.memo
        parsed = self._parse(head, client, basis, hop_field, admitted=admitted, copy=copy, placed=placed, named=named)
        hit, method, keep_alive = parsed
        if isinstance(hit, Forward):
            forward = replace(hit, keep_alive=keep_alive)
            if len(head) <= _MEMO_HEAD:
                self.forwards.remember(head, forward)
            return forward
        if isinstance(hit, Refused | Pass):
            return replace(hit, keep_alive=keep_alive)
        if hit is None or isinstance(hit, Load | Elsewhere):
            return hit
        if isinstance(hit, Cold):  # only cold() asks for one
            return None
        prepared = self._prepared(hit, method, keep_alive, basis)
        # A hop's head is not remembered: it is worthless after its time window, and no two are the same. Nor is a
        # stale answer, valid for no time at all.
        if prepared is not None and hit.viewer is None and prepared.status is CacheStatus.HIT and named is None:
            _remember(memo, head, prepared)
        return prepared

    def validated(self, head: bytes, client: str) -> Prepared | None:
        """The answer to `head` from the stored entry the origin has just confirmed (a 304) or sent, however fresh
        it is (an entry that must always be revalidated is stale on arrival): never remembered. The request was
        admitted when its fill started (find_cold), so the rate limiter is not asked again."""
        hit, method, keep_alive = self._parse(head, client, validated="304", admitted=True)
        return self._prepared(hit, method, keep_alive, False) if isinstance(hit, Hit) else None

    def stood_in(self, head: bytes, client: str) -> Prepared | None:
        """The answer to `head` from the stored entry standing in for an origin that failed its revalidation, as
        stale-if-error lets it (the caller asked core.freshness.stale_if_error_allows): STALE, never remembered, the
        request admitted when its revalidation started."""
        hit, method, keep_alive = self._parse(head, client, validated="stale-if-error", admitted=True)
        return self._prepared(hit, method, keep_alive, False) if isinstance(hit, Hit) else None

    def planned(self, hit: Hit, method: str, keep_alive: KeepAlive) -> Prepared | None:
        """`hit`, decided elsewhere (proxy.fillplan: from a fill's head alone), as an answer to send."""
        return self._prepared(hit, method, keep_alive, False)

    def _prepared(self, hit: Hit, method: str, keep_alive: KeepAlive, basis: bool) -> Prepared | None:
        encoded = self.encode(hit, keep_alive)
        if encoded is None:
            return None
        status = STATUS_OF_USE[hit.use]
        tally = observe.tally(hit.site.name, method, hit.status, status, _HIT_WAY)
        slices = () if basis else _slices(hit, self.shared.engine.slice_size)
        span = encode.age_span(encoded, hit.headers) if hit.fresh_until > -math.inf else None
        return Prepared(hit, method, keep_alive, encoded, tally, slices, status=status, age_span=span)

    def _ranged(self, head: bytes, client: str, now: float) -> Prepared | Load | _FullParse | None:
        """A single-range GET answered from the answer to the same head without its Range line.

        Players ask for a different range of the same object on every request, so their heads never repeat and
        the memo alone would parse each one. The head without its Range line does repeat: its answer (a 200 for
        the whole object, decided by the full parse, with every condition already passed, none of which keeps the
        answer whole whatever the Range: respond.ranges_apply) is memoised, and the 206 is cut from it: same
        fields, then Content-Range and Content-Length, exactly as hit.planned_hit() orders them. Anything else
        (If-Range, several Range lines, a multipart or unsatisfiable range, a stored response that is not a whole
        200, a rate-limited site) gives _FULL_PARSE. When the head without Range is no hit, neither is the head
        (Range changes nothing before hit.planned_hit): None, and aiohttp answers it.
        """
        split = rangecut.split_range(head)
        if split is None:
            return _FULL_PARSE
        raw_value, stripped = split
        player = ranges.player_value(raw_value)  # the form players send is plain, and read at once
        if player is None and not rangecut.plain_value(raw_value):
            return _FULL_PARSE
        shared = self.shared
        if shared.limiter is not None:
            return _FULL_PARSE  # deciding the whole-object answer would spend a token of the client's rate
        base = self._current(self.wholes, stripped, now)  # `now`: answer()'s, a few µs ago
        if base is None:
            decided = self._decide(stripped, client, basis=True)
            if isinstance(decided, Forward | Elsewhere | Refused | Pass):
                # Another node's object (decided and forwarded with its Range), a refusal (its log line names the
                # Range, which the head without it lacks), or a pass-through, which asks for the Range.
                return _FULL_PARSE
            if not isinstance(decided, Prepared):
                return decided  # a miss (or a Load first): the same for the head with its Range
            base = decided
        if base.hit.viewer is None and base.hit.refusal(client, now) is not None:  # a hop's was judged by its node
            return _FULL_PARSE  # refused, with its Range in the log line
        return self._cut(head, base, raw_value, player, now)

    def _cut(
        self, head: bytes, base: Prepared, raw_value: bytes, player: tuple[str, int, int | None] | None, now: float
    ) -> Prepared | _FullParse:
        """The 206 to `head` cut from `base`, the answer to it without its Range line (`raw_value`; `player`: its
        ranges.player_value()), its Age the clock's at `now` as base's is (prepared.head_at)."""
        hit, shared = base.hit, self.shared
        whole, cut = head_at(base, now), base.cutter  # its head as it would be sent now
        # its first cut, or its head made again as its Age ticked (head_at), or (never expected) its copy: what a
        # Cutter is made from is judged once for all its cuts (a Cutter is made only of a GET's whole 200 with no
        # Vary)
        if cut is None or cut.whole is not whole or cut.meta is not hit.meta:
            if base.method != "GET" or hit.status != 200 or hit.meta.status != 200 or hit.meta.vary:
                return _FULL_PARSE
            if not ranges_apply(hit.req.headers, hit.meta):  # the whole object, Range or not
                return _FULL_PARSE
            tally = observe.tally(hit.site.name, "GET", 206, base.status, _HIT_WAY)
            cut = base.cutter = rangecut.cutter(whole, base.age_span, hit, tally, _keeps(hit))
            if cut is None:
                return _FULL_PARSE
        length = hit.meta.length
        bounds = None
        if player is not None:
            value, bounds = player[0], ranges.within(player[1], player[2], length)
        if bounds is None:
            try:
                value = raw_value.decode("ascii").strip(" \t")
            except UnicodeDecodeError:
                return _FULL_PARSE
            bounds = ranges.plain_bounds(value, length)
            if bounds is None:  # another form of a single range, or anything else resolve() answers
                rng = ranges.resolve(value, length)
                if not isinstance(rng, ranges.Single):
                    return _FULL_PARSE
                bounds = rng.range.first, rng.range.last
        first, last = bounds
        content_range, size = ranges.content_range(first, last, length), last - first + 1
        shared.engine.store.touch_meta(hit.req.entry_key, hit.req.primary)
        derived = copied(hit)
        derived.status, derived.first, derived.last = 206, first, last
        derived.headers = [*cut.fields, ("Content-Range", content_range), ("Content-Length", str(size))]
        encoded = cut.head(content_range, size)
        slices = slices_of(cut.prefix, first, last, shared.engine.slice_size, hit.meta)
        prepared = Prepared(derived, "GET", base.keep_alive, encoded, cut.tally, slices, value, base.status)
        if cut.age_span is not None:  # its Age is base's, the clock's until base's ticks
            prepared.age_span, prepared.age_from, prepared.age_until = cut.age_span, base.age_from, base.age_until
        # The same range asked again (a segment of a byte-range playlist, by every viewer with the same fields) is
        # a lookup, kept apart from the memo so that players' ranges, which rarely repeat, never clear it; and only
        # from its second time (seen): remembering each new range, and dropping it at the next turn of the memos'
        # generations, was a quarter of deciding it (14.6 -> 10.8 µs in process, loadtest.hitcpu).
        if hit.viewer is None and base.status is CacheStatus.HIT and self.seen.again(head):
            _remember(self.cuts, head, prepared, cut.kept)
        return prepared

    def cold(
        self, head: bytes, client: str, admitted: bool = False, named: tuple[str, ...] | None = None
    ) -> Cold | Refused | Pass | None:
        """The fill this head's miss starts (lookup.find_cold) once find_hit() has loaded all the disk holds, or its
        refusal; None: the full handler decides it. `named`: the Vary its first fill's answer named."""
        if self.shared.overloaded:
            return self._overloaded(head)
        found, _, keep_alive = self._parse(head, client, cold=True, admitted=admitted, named=named)
        return replace(found, keep_alive=keep_alive) if isinstance(found, Cold | Refused | Pass) else None

    def fetched(
        self,
        p: Prepared,
        fill: Fill,
        ours: bool,
        cause: str | None,
        way: str | None,
        began: float,
        origin_ms: float,
        validating: ObjectMeta | None,
        found: str,
    ) -> Prepared | None:
        """The answer to the request that started (or joined) `fill`, from the hit it is decided to be now that the
        fill has its head (hit.as_fetched): a miss (EXPIRED when it replaced a stale entry), or REVALIDATED when
        the origin confirmed the stored entry; None: the full handler answers it. `found`: FillRequest.found."""
        asked = p.asked
        head = fill.head.result()
        status = of_fill(validating is not None)
        hit = as_fetched(p.hit, p.method, asked, head, ours, status, found)
        if hit is None:
            return None
        if head.status == 304:  # not a miss, and no byte comes from that fill
            status = of_304(head.worker)
            answer = self.restated(p, hit, status, MissCause.COLD if status is CacheStatus.MISS else None)
            return replace(answer, began=began, origin_ms=origin_ms, addr=fill.addr) if answer is not None else None
        answer = self.restated(p, hit, status, cause, way)
        if answer is None:
            return None
        return replace(
            answer, began=began, origin_ms=origin_ms, addr=fill.addr, fill=fill, validating=validating, ours=ours
        )

    def restated(
        self, p: Prepared, hit: Hit, status: CacheStatus, cause: str | None, way: str | None = None
    ) -> Prepared | None:
        """`p` answered as `hit` (its fields changed), with `status` and the counters and miss cause that go with
        it, and `way` its bytes came (observe.upstream: the status's own unless given); None when its head cannot be
        encoded."""
        encoded = self.encode(hit, p.keep_alive)
        if encoded is None:
            return None
        way = way or observe.upstream(status, metrics.Sources())
        tally = observe.tally(hit.site.name, p.method, hit.status, status, way)
        slices = _slices(hit, self.shared.engine.slice_size) if p.slices else ()  # of hit's version, not p's perhaps
        return replace(
            p, hit=hit, head=encoded, tally=tally, status=status, cause=cause, way=way,
            slices=slices, age_span=None, age_from=math.inf, age_until=-math.inf,  # its Age is hit's, as it is
        )  # fmt: skip

    def _overloaded(self, head: bytes) -> Refused | None:
        """admit.OVERLOADED for a head the fast path could answer otherwise, as the full handler answers it before
        any work; None for one it leaves to aiohttp."""
        refused, _, keep_alive = self._parse(head, "", overloaded=True)
        if not isinstance(refused, Refused):
            return None
        metrics.SHED_REQUESTS.inc()
        return replace(refused, keep_alive=keep_alive)

    def _parse(
        self,
        head: bytes,
        client: str,
        basis: bool = False,
        hop_field: str | None = None,
        cold: bool = False,
        validated: Validated | None = None,
        admitted: bool = False,
        overloaded: bool = False,
        copy: bool = False,
        placed: Here | None = None,
        named: tuple[str, ...] | None = None,
    ) -> tuple[Hit | Load | Forward | Elsewhere | Cold | Refused | Pass | None, str, KeepAlive]:
        if rangecut.needs_strict_parser(head):
            return None, "", KeepAlive.CLOSE
        msg = self.parser.message(head)
        if msg is None or not headparse.plain(msg):  # overloaded: the full handler sheds it first (503)
            return None if overloaded else unversioned(msg), "", KeepAlive.CLOSE
        target = msg.path  # as sent (aiohttp decodes it with surrogateescape)
        headers = headparse.fields(msg)
        if headers is None or not target.isascii():
            return None, "", KeepAlive.CLOSE
        hosts = [v for k, v in headers if k.lower() == "host"]
        if len(hosts) > 1:
            return None, "", KeepAlive.CLOSE
        m, keep_alive = msg.method, KeepAlive.of(msg.version.minor, not msg.should_close)
        if overloaded:  # before anything is looked at, as the full handler sheds it
            return Refused(admit.OVERLOADED, m, target, headers), m, keep_alive
        found = addressed(msg.url, target, hosts[0] if hosts else None)
        if isinstance(found, Reply):
            return Refused(found, m, target, headers), m, keep_alive
        host, target = found
        try:
            hit: Hit | Load | Forward | Elsewhere | Cold | Refused | Pass | None
            if cold:
                hit = find_cold(self.shared, m, host, target, headers, client, admitted, named)
            else:
                hit = find_hit(
                    self.shared, m, host, target, headers, client, basis, hop_field, validated, admitted, copy, placed,
                    named,
                )  # fmt: skip
        except Exception:  # a bug here must cost speed, not the request: the full handler answers it
            log.exception("fast path: looking up %s failed", target[:200])
            return None, "", KeepAlive.CLOSE
        return hit, m, keep_alive

    def encode(self, hit: Hit, keep_alive: KeepAlive) -> bytes | None:
        """The head aiohttp would write for these fields: Date and Server when absent, Connection when due."""
        return encode.head(hit.status, encode.phrase(hit.status), hit.headers, self.date(), keep_alive, "utf-8")


def _memo(pool: Pool) -> Memo[bytes, Prepared]:
    return Memo(*generation(pool.budget), head_cost, pool)


def _remember(memo: Memo[bytes, Prepared], head: bytes, prepared: Prepared, kept: bool | None = None) -> None:
    """Keep an answer for the same head bytes, if it can be sent again as it is: a short head, and _keeps() (`kept`:
    what it says of this answer, when the caller knows). The memo keeps the answers still asked for (core.memo)."""
    if len(head) <= _MEMO_HEAD and (_keeps(prepared.hit) if kept is None else kept):
        memo[head] = prepared


def _keeps(hit: Hit) -> bool:
    """Fields that hold their own Date (else the encoded head holds the Date of now), and no multipart boundary,
    which each answer chooses anew (respond.multipart). A range cut from a whole answer is kept as it is."""
    return hit.parts is None and any(k.lower() == "date" for k, _ in hit.headers)


def _refused(p: Prepared, reply: Reply) -> Refused:
    """The refusal of a request whose answer was remembered (the viewer or the moment changed)."""
    hit = p.hit
    return Refused.keyed(reply, p.method, hit.req.key, p.asked, hit.site.name, p.keep_alive)
