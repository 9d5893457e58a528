"""An absolute URL of a configured site, as the cache keys it: one rule for every URL an operator or a provider
gives (a purge's url or prefix, a prefetch job's, `/ring` and `edgecache ring`), so a URL one of them refuses is
never taken by another, to fail later."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar
from urllib.parse import SplitResult, urlsplit

from edgecache.core.keys import BadTarget, CacheKey, make_key
from edgecache.core.route import Router, normalise_host

MAX_URL = 8192  # characters; a target past aiohttp's 8190-byte request line could not be fetched anyway


class _Site(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def key_query(self) -> Iterable[str]: ...


S = TypeVar("S", bound=_Site)


class NotSiteURL(ValueError):
    """Why a value is not an absolute http(s) URL of a configured site that the cache can key. `unknown_host`:
    it is one, of a host no site has (the admin API's /ring answers that 404, anything else 400)."""

    def __init__(self, reason: str, unknown_host: bool = False) -> None:
        super().__init__(reason)
        self.unknown_host = unknown_host


@dataclass(frozen=True, slots=True)
class SiteURL(Generic[S]):
    site: S
    host: str
    key: CacheKey
    query: str  # as given (a prefix must have none)


def site_url(value: object, router: Router[S]) -> SiteURL[S]:
    """The site, host and cache key `value` names; NotSiteURL with the reason when it names none."""
    if not isinstance(value, str) or not value or len(value) > MAX_URL:
        raise NotSiteURL(f"not a non-empty string of at most {MAX_URL} characters")
    try:
        parts = urlsplit(value)
    except ValueError as exc:  # an unclosed IPv6 bracket
        raise NotSiteURL(f"not a URL: {exc}") from exc
    host = normalise_host(parts.netloc)
    if parts.scheme not in ("http", "https") or host is None:
        raise NotSiteURL("not an absolute http(s) URL")
    site = router.match(host)
    if site is None:
        raise NotSiteURL(f"no site is configured for host {host!r}", unknown_host=True)
    try:
        key = make_key(site.name, host, _target(parts), site.key_query)
    except BadTarget as exc:
        raise NotSiteURL(str(exc)) from exc
    return SiteURL(site, host, key, parts.query)


def request_target(url: str) -> str:
    """The request-target of `url`, as written: its path and query, what the key is made of (site_url) and what a
    node's own request for it (a prefetch job's) sends, so the key that request makes is the one the URL names."""
    return _target(urlsplit(url))


def _target(parts: SplitResult) -> str:
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
