"""The client listeners' sockets, bound by the parent process so that they outlive the worker serving them."""

from __future__ import annotations

import socket
from typing import NamedTuple

from edgecache.config import Config, Listen

BACKLOG = 1024


class Bound(NamedTuple):
    """A listening socket and what it is for."""

    addr: Listen
    tls: bool
    sock: socket.socket
    proxy: bool = False  # its connections start with a PROXY protocol header (server.proxy_protocol)


def bind_listeners(config: Config) -> list[Bound]:
    """One worker's client listeners, plain and HTTPS. With several workers each has its own sockets on the same
    addresses (SO_REUSEPORT), and the kernel spreads new connections over them."""
    bound: list[Bound] = []
    try:
        for addr, tls in [(a, False) for a in config.listen] + [(a, True) for a in config.tls_listen]:
            proxy = addr in config.proxy_protocol and not tls
            bound += [Bound(addr, tls, sock, proxy) for sock in _bind(addr, reuse_port=config.workers > 1)]
    except BaseException:
        close(bound)
        raise
    return bound


def check_free(config: Config) -> None:
    """The listener worker 0 binds itself, the admin API's, bound here for a moment and let go: an address another
    process holds stops the node at start, with the reason, as a client listener's does. (Worker 0 would die on it,
    and be started again and again, while the node never served.)"""
    if config.admin is not None:
        for sock in _bind_side(config.admin, "the admin API"):
            sock.close()


def bind_demo(config: Config) -> list[socket.socket]:
    """The demo origin's sockets, bound by the parent and served by worker 0: while worker 0 starts (it writes the
    demo's files first) or is replaced, the other workers' fills from the demo wait in this backlog. When worker 0
    bound them itself, the others answered 502 until it had (seconds, at a node's first start)."""
    return [] if config.demo_origin is None else _bind_side(config.demo_origin, "the demo origin")


def _bind_side(addr: Listen, what: str) -> list[socket.socket]:
    try:
        return _bind(addr, reuse_port=False)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror} ({what})") from exc


def close(bound: list[Bound]) -> None:
    for b in bound:
        b.sock.close()


def _bind(addr: Listen, reuse_port: bool) -> list[socket.socket]:
    """Every address the host resolves to, as loop.create_server binds them (IPv6 sockets IPv6 only)."""
    socks: list[socket.socket] = []
    try:  # a name that does not resolve (socket.gaierror) is said the same way
        infos = socket.getaddrinfo(addr.host or None, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise OSError(exc.errno, f"cannot listen on {addr}: {exc.strerror}") from exc
    return socks
