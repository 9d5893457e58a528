"""The model behind the `e2e` fuzz target (loadtest/fuzz_e2e.py): an origin whose objects change, which remembers
every version's bytes it served, and the judge of an edge's answer against them. Range and multipart handling
here is written apart from edgecache's, so a bug in the edge's range maths cannot hide behind the same one here.
"""

from __future__ import annotations

import random
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from aiohttp import web

SLICE = 16 * 1024
PATHS = tuple(f"/f{n}" for n in range(8))
ENCODINGS = (None, "gzip", "br")
CONTROLS = ("public, max-age=3600", "max-age=1", "max-age=0", "no-cache", "s-maxage=2", "", "no-store", "private")
LENGTHS = (0, 1, 100, SLICE - 1, SLICE, SLICE + 1, 2 * SLICE, 3 * SLICE + 17)
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_TOLD = ("Range", "If-Range", "If-None-Match", "If-Modified-Since", "Accept-Encoding")
_CRANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


@dataclass
class Version:
    n: int
    length: int
    etag: str | None
    modified: int | None  # seconds since the epoch, for Last-Modified
    vary: bool
    control: str
    ranges: bool
    bodies: dict[str | None, bytes] = field(default_factory=dict)  # as served, per variant (None: not varied)
    first_asked: float | None = None  # time.monotonic() when the origin was first asked for it (the Age bound)


def lm_text(seconds: int) -> str:
    return format_datetime(datetime.fromtimestamp(seconds, UTC), usegmt=True)


def resolve(spec: str, length: int) -> tuple[int, int] | None:
    """One range spec against a length: (first, last), or None when unsatisfiable (written apart from the edge's)."""
    m = _RANGE.match(spec.strip() if spec.startswith("bytes=") else "bytes=" + spec.strip())
    if not m or not (m.group(1) or m.group(2)):
        return None
    if m.group(1):
        first = int(m.group(1))
        last = min(int(m.group(2)), length - 1) if m.group(2) else length - 1
        return (first, last) if first < length and first <= last else None
    n = int(m.group(2))
    return (max(0, length - n), length - 1) if n > 0 and length > 0 else None


class ModelOrigin:
    """The objects, their versions, and every version's bytes each variant was served."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.current: dict[str, Version] = {}
        self.history: dict[str, list[Version]] = defaultdict(list)
        self.events: dict[str, list[str]] = defaultdict(list)
        # Every origin request of a path: (asked, answered), time.monotonic(). An answer that must have asked the
        # origin (of a version no cache may serve unvalidated) overlaps one of them.
        self.asks: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.hits = 0
        self.started = time.monotonic()
        self._runner: web.ServerRunner | None = None
        self.port = 0
        self._n = 0

    def note(self, path: str, text: str) -> None:
        self.events[path].append(f"{time.monotonic() - self.started:8.3f} {text}")

    def mutate(self, path: str, rng: random.Random) -> None:
        self._n += 1
        length = rng.choice(LENGTHS) if rng.random() < 0.6 else rng.randrange(5 * SLICE)
        v = Version(
            n=self._n,
            length=length,
            etag=f'"{path[1:]}-{self._n}"' if rng.random() < 0.6 else None,
            modified=1_700_000_000 + 10 * self._n if rng.random() < 0.6 else None,
            vary=rng.random() < 0.3,
            control=rng.choice(CONTROLS),
            ranges=rng.random() < 0.9,
        )
        self.current[path] = v
        self.history[path].append(v)
        self.note(path, f"v{v.n} len={length} etag={v.etag} lm={v.modified} vary={v.vary} cc={v.control!r} "
                        f"ranges={v.ranges}")  # fmt: skip

    def body(self, path: str, v: Version, tag: str | None) -> bytes:
        data = v.bodies.get(tag)
        if data is None:
            data = v.bodies[tag] = random.Random(f"{self.seed}|{path}|{v.n}|{tag}").randbytes(v.length)
        return data

    async def start(self) -> None:
        self._runner = web.ServerRunner(web.Server(self._handle))
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _headers(self, v: Version) -> dict[str, str]:
        headers = {"Content-Type": "application/octet-stream"}
        if v.control:
            headers["Cache-Control"] = v.control
        if v.etag:
            headers["ETag"] = v.etag
        if v.modified is not None:
            headers["Last-Modified"] = lm_text(v.modified)
        if v.vary:
            headers["Vary"] = "Accept-Encoding"
        return headers

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        asked = time.monotonic()
        try:
            return self._answer(request, asked)
        finally:
            self.asks[request.path].append((asked, time.monotonic()))

    def _answer(self, request: web.BaseRequest, now: float) -> web.StreamResponse:
        self.hits += 1
        path = request.path
        v = self.current.get(path)
        if v is None:
            return web.Response(status=404)
        if v.first_asked is None:
            v.first_asked = now
        tag = (request.headers.get("Accept-Encoding") or "").lower() if v.vary else None
        data = self.body(path, v, tag)
        headers = self._headers(v)
        asked = {k: request.headers[k] for k in _TOLD if k in request.headers}
        if not_modified(request.headers, v):
            self.note(path, f"  origin: 304 v{v.n} to {asked}")
            return web.Response(status=304, headers={k: x for k, x in headers.items() if k != "Content-Type"})
        status, first, last = 200, 0, len(data) - 1
        rng = request.headers.get("Range")
        if rng and v.ranges and "," not in rng and if_range_holds(request.headers.get("If-Range"), v):
            got = resolve(rng, len(data))
            if got is None and _RANGE.match(rng):
                self.note(path, f"  origin: 416 v{v.n} to {asked}")
                return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{len(data)}"})
            if got is not None:
                status, (first, last) = 206, got
                headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        self.note(path, f"  origin: {status} v{v.n} {first}-{last}/{len(data)} to {asked}")
        return web.Response(status=status, headers=headers, body=data[first : last + 1])


def not_modified(headers: object, v: Version) -> bool:
    get = headers.get  # type: ignore[attr-defined]
    inm = get("If-None-Match")
    if inm is not None:
        tags = [t.strip().removeprefix("W/") for t in inm.split(",")]
        return v.etag is not None and ("*" in tags or v.etag in tags)
    ims = get("If-Modified-Since")
    if ims is not None and v.modified is not None:
        try:
            return v.modified <= parsedate_to_datetime(ims).timestamp()
        except (TypeError, ValueError):
            return False
    return False


def if_range_holds(value: str | None, v: Version) -> bool:
    if value is None:
        return True
    if value.startswith('"'):
        return value == v.etag
    return v.modified is not None and value == lm_text(v.modified)


@dataclass
class Ask:
    method: str
    path: str
    headers: dict[str, str]

    @property
    def tag(self) -> str:
        return (self.headers.get("Accept-Encoding") or "").lower()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def candidates(origin: ModelOrigin, ask: Ask) -> list[tuple[Version, bytes]]:
    """Every (version, bytes) of the path the origin served that this request may be answered with."""
    out = []
    for v in origin.history[ask.path]:
        for tag in (ask.tag, None):
            if tag in v.bodies and (tag is None) != v.vary:
                out.append((v, v.bodies[tag]))
    return out


def etag_fits(v: Version, answer: Answer) -> bool:
    etag = answer.headers.get("etag")
    return etag is None or etag.removeprefix("W/") == v.etag


def judge(origin: ModelOrigin, ask: Ask, a: Answer) -> tuple[str, str] | None:
    """None when the answer is one the origin's versions allow; else (category, why)."""
    if a.status >= 500:
        return "5xx", f"{a.status} {a.body[:120]!r}"
    both = candidates(origin, ask)
    head = ask.method == "HEAD"
    length = a.headers.get("content-length")
    if length is not None and not head and int(length) != len(a.body):
        return "wrong-head", f"Content-Length {length} for {len(a.body)} bytes"
    if a.status == 200:
        if head:
            fits = [v for v, b in both if length is None or len(b) == int(length)]
        else:
            fits = [v for v, b in both if b == a.body]
        if not fits:
            return "wrong-bytes", f"200 of {len(a.body)} bytes (length {length}) matches no version served"
        return None if any(etag_fits(v, a) for v in fits) else ("wrong-head", f"ETag {a.headers.get('etag')}")
    if a.status == 206:
        return judge_partial(ask, a, both)
    if a.status == 304:
        conditional = any(h in ask.headers for h in ("If-None-Match", "If-Modified-Since"))
        return None if conditional else ("unexpected", "304 to an unconditional request")
    if a.status == 416:
        m = re.match(r"^bytes \*/(\d+)$", a.headers.get("content-range", ""))
        rng = ask.headers.get("Range", "")
        if m is None or not rng:
            return "wrong-head", f"416 with Content-Range {a.headers.get('content-range')!r} to Range {rng!r}"
        n = int(m.group(1))
        if not any(len(b) == n for _, b in both):
            return "wrong-head", f"416 for length {n}, no version served has it"
        if any(resolve(s, n) is not None for s in rng.removeprefix("bytes=").split(",")):
            return "wrong-head", f"416 for length {n} though {rng} overlaps it"
        return None
    return "unexpected", f"status {a.status} {a.body[:120]!r}"


def judge_partial(ask: Ask, a: Answer, both: list[tuple[Version, bytes]]) -> tuple[str, str] | None:
    if ask.headers.get("Range") is None:
        return "unexpected", "206 to a request without Range"
    ctype = a.headers.get("content-type", "")
    if ctype.startswith("multipart/byteranges"):
        if ask.method == "HEAD":
            return None
        parts = parse_multipart(a.body, ctype.partition("boundary=")[2].strip('"'))
        if parts is None:
            return "wrong-head", "multipart body does not parse"
    else:
        m = _CRANGE.match(a.headers.get("content-range", ""))
        if m is None:
            return "wrong-head", f"206 with Content-Range {a.headers.get('content-range')!r}"
        first, last, n = (int(g) for g in m.groups())
        if ask.method == "HEAD":
            return None if any(len(b) == n for _, b in both) else ("wrong-head", f"HEAD 206 of length {n}")
        parts = [(first, last, n, a.body)]
        specs = ask.headers["Range"].removeprefix("bytes=").split(",")
        if len(specs) == 1 and resolve(specs[0], n) != (first, last):
            return "wrong-head", f"Content-Range {first}-{last}/{n} for Range {ask.headers['Range']}"
    for v, b in both:
        if all(len(b) == n and b[first : last + 1] == data for first, last, n, data in parts) and etag_fits(v, a):
            return None
    return "wrong-bytes", f"206 parts {[(f, last, n, len(d)) for f, last, n, d in parts]} match no one version"


def parse_multipart(body: bytes, boundary: str) -> list[tuple[int, int, int, bytes]] | None:
    """The parts (first, last, length, bytes) of a multipart/byteranges body, read by their Content-Range."""
    delim = b"--" + boundary.encode()
    pos = body.find(delim)
    parts: list[tuple[int, int, int, bytes]] = []
    while pos >= 0:
        pos += len(delim)
        if body[pos : pos + 2] == b"--":
            return parts
        end = body.find(b"\r\n\r\n", pos)
        if end < 0:
            return None
        heads = body[pos:end].decode("latin-1").lower()
        m = re.search(r"content-range: bytes (\d+)-(\d+)/(\d+)", heads)
        if m is None:
            return None
        first, last, n = (int(g) for g in m.groups())
        data = body[end + 4 : end + 4 + last - first + 1]
        if len(data) != last - first + 1:
            return None
        parts.append((first, last, n, data))
        pos = body.find(delim, end + 4 + len(data))
    return None


# Cache-Control of versions that no cache may serve without asking the origin (RFC 9111 5.2.2.4, 5.2.2.5, 5.2.2.7,
# 4.2.1: fresh for 0 seconds), and that a shared cache may not store at all.
UNVALIDATED = ("no-cache", "max-age=0", "no-store", "private")
SLACK = 1.0


def judge_time(origin: ModelOrigin, ask: Ask, a: Answer, asked: float, answered: float) -> tuple[str, str] | None:
    """The checks of an answer the bytes allow (judge) that need the time it was asked and answered
    (time.monotonic()): its Age, and whether it asked the origin when it had to. Only where the model can tell:
    a GET answered 200 or 206 whose bytes match versions of one kind (an empty body matches many)."""
    if ask.method != "GET" or a.status not in (200, 206):
        return None
    fits = [v for v, b in candidates(origin, ask) if _matches(a, b)]
    if not fits:
        return None
    age = a.headers.get("age")
    if age is not None:
        if not age.isdigit():
            return "age", f"Age {age!r}"
        # Age counts from the origin's Date (a second's resolution) at the latest: at most the time since the
        # version was first asked of the origin, plus that second.
        since = max(answered - v.first_asked for v in fits if v.first_asked is not None)
        if int(age) > since + 1:
            return "age", f"Age {age} for a version first asked of the origin {since:.2f} s before"
    must = "no-cache" in ask.headers.get("Cache-Control", "") or all(v.control in UNVALIDATED for v in fits)
    if not must:
        return None
    why = "no-cache asked" if "Cache-Control" in ask.headers else f"cc={fits[-1].control!r}"
    status = a.headers.get("cache-status", "")
    if "fwd=" not in status:  # the edge says it answered from its store alone
        return "unvalidated", f"{a.status} served as a hit ({why}): {status!r}"
    # It says it asked the origin. A request may join a fill (or revalidation) asked just before it came, whose
    # answer the edge had not read yet (16 clients on a loaded loop: 20 ms seen): a second's slack.
    if not any(a0 <= answered and a1 >= asked - SLACK for a0, a1 in origin.asks[ask.path]):
        return "unvalidated", f"{a.status} said {status!r} ({why}), and the origin was not asked within {SLACK} s"
    return None


def _matches(a: Answer, body: bytes) -> bool:
    """Are the answer's bytes (a 200's body, a single 206's part, every multipart part's) those of `body`?"""
    if a.status == 200:
        return a.body == body
    ctype = a.headers.get("content-type", "")
    if ctype.startswith("multipart/byteranges"):
        parts = parse_multipart(a.body, ctype.partition("boundary=")[2].strip('"')) or []
    else:
        m = _CRANGE.match(a.headers.get("content-range", ""))
        parts = [(int(m.group(1)), int(m.group(2)), int(m.group(3)), a.body)] if m else []
    return bool(parts) and all(len(body) == n and body[f : last + 1] == d for f, last, n, d in parts)
