"""The origin client: one pooled aiohttp session per process, bounded failover across a site's origins."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict

from edgecache import metrics
from edgecache.config import OriginSettings, Site
from edgecache.core.headers import Headers
from edgecache.errors import OriginError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class OriginResponse:
    status: int
    headers: Headers
    raw: aiohttp.ClientResponse
    origin: str
    site: str = "-"

    def release(self) -> None:
        self.raw.release()

    def close(self) -> None:
        self.raw.close()


class OriginClient:
    def __init__(self, settings: OriginSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.settings.max_connections, limit_per_host=0, ttl_dns_cache=60, enable_cleanup_closed=True
        )
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.settings.connect_timeout, sock_read=self.settings.read_timeout
        )
        # Bodies are stored exactly as the origin encoded them: never decompress, never add our own fields.
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        site: Site,
        method: str,
        target: str,
        headers: Headers,
        body: AsyncIterable[bytes] | bytes | None = None,
    ) -> OriginResponse:
        """Send to the site's origins in order; the next one is tried on a connection error, timeout or 5xx.

        A request with a body is never retried: it may already have had its effect.
        """
        assert self._session is not None, "OriginClient.start() not called"
        origins = site.origins if body is None else site.origins[:1]
        last_error: OriginError | None = None
        for i, base in enumerate(origins):
            is_last = i == len(origins) - 1
            started = time.monotonic()
            try:
                raw = await self._session.request(
                    method,
                    base + target,
                    headers=CIMultiDict(headers),
                    data=body,
                    allow_redirects=False,
                    compress=None,
                    chunked=None,
                )
            except TimeoutError as exc:
                metrics.ORIGIN_ERRORS.labels(site.name, "timeout").inc()
                last_error = OriginError(f"{base}: timed out", timeout=True)
                log.info("origin %s timed out: %s", base, exc)
                continue
            except (aiohttp.ClientError, OSError) as exc:
                metrics.ORIGIN_ERRORS.labels(site.name, "connect").inc()
                # No response came: the peer refused, or a pooled connection to it was found dead. Nothing reached
                # the client, so an idempotent request may go elsewhere.
                refused = isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError)
                last_error = OriginError(f"{base}: {exc.__class__.__name__}: {exc}", connect=True, refused=refused)
                log.info("origin %s failed: %s", base, exc)
                continue
            metrics.ORIGIN_LATENCY.labels(site.name).observe(time.monotonic() - started)
            metrics.ORIGIN_REQUESTS.labels(site.name, metrics.status_class(raw.status)).inc()
            if raw.status >= 500 and not is_last:
                log.info("origin %s answered %d, trying the next origin", base, raw.status)
                raw.release()
                continue
            return OriginResponse(raw.status, tuple(raw.headers.items()), raw, base, site.name)
        assert last_error is not None
        raise last_error


async def read_chunks(resp: OriginResponse) -> AsyncIterable[bytes]:
    """The body as it arrives; a cut or malformed body raises OriginError, never ends early in silence.

    Chunks are passed on as the parser produced them (iter_chunked would join or split them: a copy of every
    byte, which costs more than the rest of the fill path on a VM). The end is asked of the stream, not read from
    an empty chunk: aiohttp hands every body-less response one shared EMPTY_PAYLOAD whose readchunk() answers
    (b"", True) forever once read, without awaiting, so a loop that skipped empty chunks spun the loop at 100%.
    An empty chunk before the end only marks a chunk boundary, and the next read takes the next one.
    """
    counter = metrics.ORIGIN_BYTES.labels(resp.site)
    content = resp.raw.content
    try:
        while True:
            chunk, _ = await content.readchunk()
            if chunk:
                counter.inc(len(chunk))
                yield chunk
            elif content.at_eof():
                return
    except TimeoutError as exc:
        raise OriginError("origin body read timed out", timeout=True) from exc
    except (aiohttp.ClientPayloadError, aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
        raise OriginError(f"origin body broken: {exc}") from exc
