"""An HTTPS listener's connections during their TLS handshake: counted against max_connections from the accept,
as plain ones are, and given header_timeout to end it, as a plain request head is (nginx's client_header_timeout).

A listener made with create_server(ssl=...) calls its protocol only once the handshake is done, and gives the
handshake 60 s: connections that never finished one (a client that connects and sends nothing) held a file
descriptor each, counted nowhere, and enough of them took the worker past its descriptor limit, where no client got
an answer and the files it opened failed. So an HTTPS listener is a plain one whose connections start here, before
any byte is read: a seat is taken, the socket given to the loop's TLS (connect_accepted_socket) with the header
timeout, and the seat handed to the fast path's connection once its handshake is done, or let go when it fails.
A connection past max_connections is closed at once: before TLS there is no way to send it the 503.

Its first byte is peeked at before the handshake, as nginx does: a connection that does not start with a TLS record
is a plain HTTP client on the HTTPS port, and gets 400 "the plain HTTP request was sent to HTTPS port" in plain HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from typing import TYPE_CHECKING, cast

from edgecache import metrics
from edgecache.core.keepalive import KeepAlive
from edgecache.proxy import diskhit, encode
from edgecache.proxy.fastpath import MAX_HEAD as MAX_UNREAD
from edgecache.proxy.fastpath import FastPath

if TYPE_CHECKING:
    from edgecache.proxy.fastserver import FastServer

# How long a connection the node closes waits for the client's close_notify after sending its own (asyncio's and
# uvloop's default, 30 s, held a client that never sends one, and its place under max_connections, that long).
SHUTDOWN_SECONDS = 3.0


class _Seated(FastPath):
    """The fast path's connection of a handshake that held a seat: it takes the seat over once it is made."""

    def __init__(self, server: FastServer, door: TLSDoor) -> None:
        super().__init__(server)
        self.door = door

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.door.release()
        # The TLS transport holds what it is given, encrypted, and asks the writer to wait only past 512 KiB by
        # default (asyncio's and uvloop's): a client that stopped reading held that much of the node's memory.
        cast(asyncio.WriteTransport, transport).set_write_buffer_limits(high=diskhit.TLS_PIECE)
        super().connection_made(transport)


class TLSDoor(asyncio.Protocol):
    """The protocol of a new connection on an HTTPS listener for as long as its connection_made, which no byte
    is read before on either loop: the socket is passed on (a duplicate of its descriptor) and this transport
    closed. Then the handshake's: FastServer.handshaking holds it until the handshake ends."""

    def __init__(self, server: FastServer, context: ssl.SSLContext) -> None:
        self.server, self.context = server, context
        self.sock: socket.socket | None = None
        self.seated = False
        self.done: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server, raw = self.server, transport.get_extra_info("socket")
        if not (server.stopping or server.open >= server.settings.max_connections) and raw is not None:
            with contextlib.suppress(OSError):  # out of file descriptors: as for a full node
                self.sock = socket.socket(raw.family, raw.type, raw.proto, os.dup(raw.fileno()))
        if self.sock is None and not server.stopping:
            metrics.REJECTED_CONNECTIONS.inc()
        cast(asyncio.Transport, transport).abort()  # its descriptor; the connection lives on in self.sock, if taken
        if self.sock is None:
            return
        server.open += 1
        self.seated = True
        server.handshaking.add(self)
        self.done = asyncio.get_running_loop().create_task(self._handshake(self.sock))

    async def _handshake(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.server.settings.header_timeout
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    first = await _peek(loop, sock)
            except BaseException:  # none in time, or the node stops: the socket is still ours
                sock.close()
                raise
            if first not in _TLS:  # plain HTTP (or nothing): answered as nginx does, or closed
                return await _plain(sock, first, self.server)
            await loop.connect_accepted_socket(
                lambda: _Seated(self.server, self),
                sock,
                ssl=self.context,
                ssl_handshake_timeout=max(deadline - loop.time(), 0.001),
                ssl_shutdown_timeout=SHUTDOWN_SECONDS,
            )
        except OSError:  # a failed handshake, or none in time (SSLError, TimeoutError): the socket is closed
            pass
        finally:
            self.release()
            self.server.handshaking.discard(self)

    def release(self) -> None:
        """The handshake is over: its seat goes (to its connection, which counts itself, or back)."""
        if self.seated:
            self.seated = False
            self.server.open -= 1

    def cut(self) -> None:
        """End the handshake now (the node stops): it fails at once, and the loop closes the socket."""
        if self.sock is not None:
            with contextlib.suppress(OSError):  # closed meanwhile (the loop detaches it as it closes)
                self.sock.shutdown(socket.SHUT_RDWR)


# A TLS record starts with its type, a handshake (0x16); an SSLv2-style ClientHello with a byte of the high bit set.
_TLS = frozenset(bytes([b]) for b in (0x16, *range(0x80, 0x100)))
PLAIN_ON_TLS = "the plain HTTP request was sent to HTTPS port"  # nginx's reason


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """The connection's first byte, left in the socket for the TLS handshake (b"": it closed without one)."""
    while True:
        try:
            return sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            pass
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), _wake, readable)
        try:
            await readable
        finally:
            loop.remove_reader(sock.fileno())


def _wake(readable: asyncio.Future[None]) -> None:
    if not readable.done():  # the reader may be called again before the peek's task runs
        readable.set_result(None)


async def _plain(sock: socket.socket, first: bytes, server: FastServer) -> None:
    """A connection that did not start with TLS: a client's plain HTTP gets 400 saying so (nginx's answer), and the
    connection lingers (closed with what it sent unread, the socket would reset the connection, the answer lost)."""
    if not first:
        sock.close()
        return
    try:
        with contextlib.suppress(BlockingIOError):
            sock.recv(MAX_UNREAD)  # what came already, should lingering be full
        sock.send(encode.error(400, PLAIN_ON_TLS, server.date(), KeepAlive.CLOSE))
    except OSError:
        sock.close()
        return
    await server.lingering.close_socket(sock)
