"""An HTTPS listener's connections during their TLS handshake: counted against max_connections from the accept,
as plain ones are, and given header_timeout to end it, as a plain request head is (nginx's client_header_timeout).

A listener made with create_server(ssl=...) calls its protocol only once the handshake is done, and gives the
handshake 60 s: connections that never finished one (a client that connects and sends nothing) held a file
descriptor each, counted nowhere, and enough of them took the worker past its descriptor limit, where no client got
an answer and the files it opened failed. So an HTTPS listener is a plain one whose connections start here, before
any byte is read: a seat is taken, the socket given to the loop's TLS (connect_accepted_socket) with the header
timeout, and the seat handed to the fast path's connection once its handshake is done, or let go when it fails.
A connection past max_connections is closed at once: before TLS there is no way to send it the 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from typing import TYPE_CHECKING, cast

from edgecache import metrics
from edgecache.proxy import diskhit
from edgecache.proxy.fastpath import FastPath

if TYPE_CHECKING:
    from edgecache.proxy.fastserver import FastServer


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
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: _Seated(self.server, self),
                sock,
                ssl=self.context,
                ssl_handshake_timeout=self.server.settings.header_timeout,
            )
        except OSError:  # a failed handshake, or none in time (SSLError, TimeoutError): the loop closed the socket
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
