"""POST /prefetch (a JSON body, or newline-separated URLs with options in the query), GET /prefetch[/{id}],
DELETE /prefetch/{id} (cancel a queued or running job, forget a finished one). A job past the runner's bounds is
refused with 429 and the reason."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from edgecache.admin.auth import authorize, token_of, unknown
from edgecache.admin.body import bad, parse_json, read_body, unknown_option
from edgecache.admin.jobs import FINISHED, Job, JobRunner, JobsFull
from edgecache.config import Config, Site, Token, parse_size
from edgecache.core.route import Router
from edgecache.core.siteurl import NotSiteURL, site_url
from edgecache.proxy.shares import share

_OPTIONS = frozenset({"priority", "concurrency", "bandwidth", "window", "window_start", "window_end", "renditions"})
_WINDOW = frozenset({"start", "end"})
_WINDOWS = frozenset({"window", "window_start", "window_end"})  # the two ways to give one
_TAKES = "priority, concurrency, bandwidth, window (or window_start and window_end) and renditions"


async def _read(request: web.Request) -> tuple[list[Any], dict[str, Any]]:
    """JSON, or text/plain lines. A body of another type (a form, what `curl -d` sends) is JSON when it starts as
    JSON does, as /purge reads it: no URL of a list starts with { or [."""
    raw = await read_body(request)
    kind = request.content_type
    if kind == "application/json" or (kind != "text/plain" and raw.lstrip()[:1] in (b"{", b"[")):
        body = parse_json(raw)
        # The query's options are a text/plain body's: beside JSON, `?concurrency=1` ran the job at the default.
        if (extra := unknown_option(request.query)) is not None:
            raise bad(f"unknown parameter {extra}: with a JSON body a job takes its options in the body")
        if isinstance(body, list):
            return body, {}
        if isinstance(body, dict) and isinstance(body.get("urls"), list):
            if (extra := unknown_option(body, _OPTIONS | {"urls"})) is not None:
                raise bad(f"unknown key {extra}: a job takes urls, {_TAKES}")
            return body["urls"], body
        raise bad("expected a JSON array of URLs or an object with a 'urls' array")
    # An option it does not take is refused, never ignored: a typo ran the job with the default.
    if (extra := unknown_option(request.query, _OPTIONS)) is not None:
        raise bad(f"unknown parameter {extra}: a job takes {_TAKES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad("body is not UTF-8 text") from exc
    # A BOM (a list saved by a Windows editor) and indented comments are not URLs.
    lines = (line.strip() for line in text.removeprefix("\ufeff").splitlines())
    urls = [line for line in lines if line and not line.startswith("#")]
    return urls, {k: _query_value(k, v) for k, v in request.query.items()}


def _query_value(name: str, value: str) -> Any:
    """A query string's option, typed as its JSON form would be: its numbers are integers."""
    return int(value) if name in ("priority", "concurrency") and re.fullmatch(r"-?[0-9]{1,10}", value) else value


_TIME_OF_DAY = re.compile(r"[0-2][0-9]:[0-5][0-9](:[0-5][0-9])?")  # docs/admin-api.yaml's TimeOfDay


def _integer(opts: dict[str, Any], name: str, default: int) -> int:
    """An integer option as the schema has it: true, 1.7 or "5" are not one (int() took each)."""
    value = opts.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or abs(value) > 2**31:
        raise ValueError(f"{name} must be an integer, not {value!r}"[:200])
    return value


def _options(opts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        out["priority"] = _integer(opts, "priority", 0)
        out["concurrency"] = _integer(opts, "concurrency", 4)
        if "bandwidth" in opts:
            out["bandwidth"] = parse_size(opts["bandwidth"])
        if given := _WINDOWS & opts.keys():  # an end alone was ignored: the job ran at once, all day
            if given != {"window"} and given != {"window_start", "window_end"}:
                raise ValueError("a window is window (start and end), or window_start and window_end, each given once")
            window = opts.get("window") or {"start": opts.get("window_start"), "end": opts.get("window_end")}
            if isinstance(window, dict) and (extra := unknown_option(window, _WINDOW)) is not None:
                raise bad(f"unknown key {extra} in window: it takes start and end")
            start, end = str(window["start"]), str(window["end"])
            bounds = datetime.time.fromisoformat(start), datetime.time.fromisoformat(end)
            if any(t.tzinfo is not None for t in bounds):  # the node's clock is local and naive (window.in_window)
                raise ValueError(f"window {start}-{end}: times are local, without an offset")
            if not (_TIME_OF_DAY.fullmatch(start) and _TIME_OF_DAY.fullmatch(end)):
                raise ValueError(f"window {start[:20]}-{end[:20]}: times are HH:MM or HH:MM:SS")
            if bounds[0] == bounds[1]:
                raise ValueError(f"window {start}-{end} is empty")
            out["window"] = (start, end)
    except (ValueError, TypeError, KeyError, OverflowError) as exc:  # OverflowError: JSON's 1e999 is infinity
        raise bad(f"bad option: {exc}") from exc
    renditions = opts.get("renditions", [])
    if isinstance(renditions, str):
        renditions = [r for r in renditions.split(",") if r]
    if not isinstance(renditions, list) or not all(isinstance(r, str) for r in renditions):
        raise bad("renditions must be a list of representation ids")
    out["renditions"] = renditions
    if not 1 <= out["concurrency"] <= 64:
        raise bad("concurrency must be between 1 and 64")
    if out.get("bandwidth") == 0:
        raise bad("bandwidth must be positive")
    return out


CHECK_BATCH = 1_000  # URLs checked between two turns of the loop (10-40 us each: 40,000 in a 1 MiB list)


async def _check_urls(urls: list[Any], config: Config, token: Token, max_urls: int) -> list[str]:
    if not urls:
        raise bad("no URLs")
    if len(urls) > max_urls:
        raise bad(f"at most {max_urls} URLs per job")
    router = Router((s.hosts, s) for s in config.sites)
    checked = []
    for i, url in enumerate(urls):
        if i % CHECK_BATCH == CHECK_BATCH - 1:
            await asyncio.sleep(0)  # the worker's clients are served between batches
        if not isinstance(url, str):
            raise bad(f"item {i} is not a string")
        try:
            site = site_url(url, router).site  # as a purge takes it (core.siteurl)
        except NotSiteURL as exc:
            if exc.unknown_host:
                unknown(token)  # a provider's: as another provider's host
            raise bad(f"item {i}: {url[:200]!r}: {exc}") from None
        authorize(token, site.name)
        checked.append(url)
    return checked


def site_of(current: Callable[[], Config]) -> Callable[[str], str]:
    """The name of the site a URL is of under the running config ("" for none)."""
    seen: list[tuple[Config, Router[Site]]] = []

    def of(url: str) -> str:
        config = current()
        if not seen or seen[0][0] is not config:
            seen[:] = [(config, Router((s.hosts, s) for s in config.sites))]
        try:
            return site_url(url, seen[0][1]).site.name
        except NotSiteURL:
            return ""

    return of


def owner_may(current: Callable[[], Config]) -> Callable[[str, str], bool]:
    """Whether a job's owner may still have `url` fetched, under the running config: its token is still there and
    acts on the URL's site. A reload may remove the token, or the site from it (a provider that left, a host
    moved to another provider's site), and its jobs, queued or resumed after a restart, fetched on regardless."""
    of = site_of(current)

    def may(owner: str, url: str) -> bool:
        token = next((t for t in current().tokens if t.name == owner), None)
        site = of(url)
        return token is not None and site != "" and token.may_act_on(site)

    return may


def prefetch_routes(current: Callable[[], Config], runner: JobRunner) -> list[web.RouteDef]:
    runner.may = owner_may(current)  # each URL a job is about to fetch is asked of the config the routes read
    # A site whose origin hangs holds at most its share of the slots, as of an origin pool's connections
    runner.site_of = site_of(current)
    runner.site_most = lambda: share(runner.slots, len(current().sites), None)

    async def create(request: web.Request) -> web.Response:
        config = current()
        token = token_of(request)
        urls, opts = await _read(request)
        checked = await _check_urls(urls, config, token, runner.max_urls)
        try:
            job = await runner.submit(Job(id="", owner=token.name, urls=checked, **_options(opts)))
        except JobsFull as exc:
            raise web.HTTPTooManyRequests(
                text=json.dumps({"error": str(exc)}) + "\n", content_type="application/json"
            ) from exc
        return web.json_response(job.view(), status=202)

    def _find(request: web.Request) -> Job:
        """The job named in the path, if this token may see it (another provider's job is not said to exist)."""
        token = token_of(request)
        job = runner.jobs.get(request.match_info["id"])
        if job is None or (token.role != "operator" and job.owner != token.name):
            raise web.HTTPNotFound(text='{"error": "no such job"}\n', content_type="application/json")
        return job

    async def show(request: web.Request) -> web.Response:
        return web.json_response(_find(request).view())

    async def delete(request: web.Request) -> web.Response:
        job = _find(request)
        state = job.state
        if state in FINISHED:
            await runner.delete(job.id)
            return web.json_response({"deleted": job.id, "state": state})
        await runner.cancel(job.id)  # it stays listed, as cancelled, until deleted or past its retention
        return web.json_response({"cancelled": job.id, "state": state})

    async def listing(request: web.Request) -> web.Response:
        token = token_of(request)
        jobs = [j.view() for j in runner.jobs.values() if token.role == "operator" or j.owner == token.name]
        return web.json_response(jobs)

    return [
        web.post("/prefetch", create),
        web.get("/prefetch", listing),
        web.get("/prefetch/{id}", show),
        web.delete("/prefetch/{id}", delete),
    ]
