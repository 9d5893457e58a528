"""The URLs the admin API is given (a purge's url or prefix, a prefetch job's): one rule for what is one, so a URL
a purge refuses is never taken by a prefetch job, to fail later at its fetch."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from edgecache.config import Site
from edgecache.core.keys import BadTarget, CacheKey, make_key
from edgecache.core.route import Router, normalise_host

MAX_URL = 8192  # characters; a target past aiohttp's 8190-byte request line could not be fetched anyway


class NotSiteURL(ValueError):
    """Why a value is not an absolute http(s) URL of a configured site that the cache can key."""


@dataclass(frozen=True, slots=True)
class SiteURL:
    site: Site
    host: str
    key: CacheKey
    query: str  # as given (a prefix must have none)


def site_url(value: object, router: Router[Site]) -> SiteURL:
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
        raise NotSiteURL(f"no site is configured for host {host!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        key = make_key(site.name, host, target, site.key_query)
    except BadTarget as exc:
        raise NotSiteURL(str(exc)) from exc
    return SiteURL(site, host, key, parts.query)
