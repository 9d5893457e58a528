"""aiohttp's sites (listeners) for a node: each stops accepting before it closes, and the client listeners start
their connections on the fast path's protocol."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from asyncio import selector_events
from collections.abc import Callable
from functools import partial

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from edgecache.proxy import badhead
from edgecache.proxy.fastserver import FastServer
from edgecache.proxy.headguard import HeadGuard
from edgecache.proxy.tlsdoor import TLSDoor


async def stop_accepting(server: asyncio.AbstractServer | None) -> None:
    """Before a listener closes: take no new connection, and let those accepted already get their transports.

    On asyncio's own loop (tests; the CLI runs uvloop), a connection accepted in the turn before Server.close()
    gets its transport only afterwards, when Python 3.11 refuses to attach it to the closed server: the socket is
    then never closed, and nobody knows of it."""
    loop = asyncio.get_running_loop()
    if not isinstance(server, asyncio.Server) or not isinstance(loop, selector_events.BaseSelectorEventLoop):
        return
    for sock in server.sockets:  # a selector loop's listeners are readers
        loop.remove_reader(sock.fileno())
    await asyncio.sleep(0)


class _StopsAccepting(web.BaseSite):
    """A listener closed as stop_accepting() says."""

    __slots__ = ()

    async def stop(self) -> None:
        await stop_accepting(self._server)
        await super().stop()


class TCPListener(_StopsAccepting, web.TCPSite):
    """aiohttp's TCP listener (the admin API's, the demo origin's, and in tests every listener of a node). With a
    `head_timeout`, a connection whose request head is not complete that long after it began is closed with a
    408 (proxy.headguard): aiohttp has no such bound, and the admin listener shares its worker with viewers."""

    __slots__ = ("_head_timeout",)

    def __init__(self, runner: web.BaseRunner, host: str, port: int, head_timeout: float | None = None) -> None:
        super().__init__(runner, host, port)
        self._head_timeout = head_timeout

    async def start(self) -> None:
        seconds = self._head_timeout
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None

        def made() -> asyncio.Protocol:
            handler = badhead.handler_of(server)  # a head the parser refuses: a reason, never its bytes back
            return handler if seconds is None else HeadGuard(handler, seconds, closed=lambda: None, first=True)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(made, self._host, self._port, backlog=self._backlog)


class FastSite(_StopsAccepting):
    """A listener whose connections start on the fast path (aiohttp's TCPSite, with our protocol factory)."""

    __slots__ = ("_fast", "_proxy", "_sock")

    def __init__(
        self,
        runner: web.BaseRunner,
        fast: FastServer,
        sock: socket.socket,
        *,
        backlog: int,
        ssl_context: ssl.SSLContext | None = None,
        proxy: bool = False,
    ) -> None:
        super().__init__(runner, backlog=backlog, ssl_context=ssl_context)
        self._fast, self._sock, self._proxy = fast, sock, proxy

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"{'https' if self._ssl_context else 'http'}://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        fast, context = self._fast, self._ssl_context
        factory: Callable[[], asyncio.Protocol] = fast.proxy_protocol if self._proxy else fast.protocol
        if context is not None:  # its handshake counted from the accept and timed (proxy.tlsdoor)
            factory = partial(TLSDoor, fast, context)
        self._server = await asyncio.get_running_loop().create_server(factory, sock=self._sock, backlog=self._backlog)


class _ClientFaults(logging.Filter):
    """aiohttp's server logs a request head it cannot parse (too many fields, an over-long line, bytes that are not
    HTTP) as an error with a traceback: any client could fill the error log at will. The client was answered 400
    already; its fault is one line at INFO, as nginx logs it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "%s: %s %s", (record.getMessage(), exc.code, " ".join(exc.message.split()))
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_client_faults() -> None:
    """Install _ClientFaults on aiohttp's server logger, once per process."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ClientFaults) for f in server_log.filters):
        server_log.addFilter(_ClientFaults())
