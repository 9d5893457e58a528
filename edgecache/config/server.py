"""The [server] table: listeners, limits and timeouts of the client side, and the checks that need the whole file."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path
from typing import Any, TypedDict

from edgecache.config.files import read_tls
from edgecache.config.model import SERVER_FIELD, Config, Listen, TLSFiles
from edgecache.config.schema import KEYS
from edgecache.config.values import (
    _bool,
    _choice,
    _positive,
    _Reader,
    _seconds,
    _str_list,
    check_watchdog,
    parse_listen,
    seconds_between,
    subnets,
)

MAX_DRAIN = 3600.0
MAX_WATCH = 3600.0
MAX_WORKERS = 256  # past any machine's cores: a typo (1000 for 100) would fork a process per unit
MAX_SERVER_FIELD = 128
# RFC 9110 10.2.4: Server = product *( RWS ( product / comment ) ), product = token [ "/" token ]; products only
# (a comment's text is free), one space apart.
_PRODUCT = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:/[!#$%&'*+.^_`|~0-9A-Za-z-]+)?"
_PRODUCTS = re.compile(rf"{_PRODUCT}(?: {_PRODUCT})*")


class ServerFields(TypedDict):
    """The fields of Config that [server] gives, passed on as Config(**fields): mypy checks each against Config."""

    listen: tuple[Listen, ...]
    workers: int
    client_write_timeout: float
    max_requests: int
    max_connections: int
    rate_limit: float | None
    burst: float | None
    proxy_protocol: tuple[Listen, ...]
    proxy_protocol_from: tuple[IPv4Network | IPv6Network, ...]
    trusted_forwarders: tuple[IPv4Network | IPv6Network, ...]
    fast_path: bool
    header_timeout: float
    idle_timeout: float
    watchdog: float
    drain: float
    watch_config: float
    reload_timeout: float
    disk_send: str
    server_field: str
    tls_listen: tuple[Listen, ...]
    tls: TLSFiles | None


def read_server(r: _Reader, doc: dict[str, Any], base: Path) -> ServerFields:
    t = r.table(doc, "server")
    p = "server."
    r.unknown(t, p, KEYS["server"])
    return ServerFields(
        listen=r.get(t, p, "listen", _listen_list, ()) or (Listen("127.0.0.1", 8080),),
        workers=r.get(t, p, "workers", _workers, 1),
        client_write_timeout=r.get(t, p, "client_write_timeout", _positive(float), 60.0),
        max_requests=r.get(t, p, "max_requests", _positive(int), 10_000),
        max_connections=r.get(t, p, "max_connections", _positive(int), 20_000),
        rate_limit=r.get(t, p, "rate_limit", _positive(float), None),
        burst=r.get(t, p, "burst", _burst, None),
        proxy_protocol=r.get(t, p, "proxy_protocol", _listen_list, ()),
        proxy_protocol_from=subnets(r, t, p, "proxy_protocol_from"),
        trusted_forwarders=subnets(r, t, p, "trusted_forwarders"),
        fast_path=r.get(t, p, "fast_path", _bool, True),
        header_timeout=r.get(t, p, "header_timeout", _positive(float), 10.0),
        idle_timeout=r.get(t, p, "idle_timeout", _positive(float), 75.0),
        watchdog=r.get(t, p, "watchdog", check_watchdog, 10.0),
        drain=r.get(t, p, "drain", _drain, 10.0),
        watch_config=r.get(t, p, "watch_config", _watch_config, 0.0),
        reload_timeout=r.get(t, p, "reload_timeout", _reload_timeout, 10.0),
        disk_send=r.get(t, p, "disk_send", _choice("pread", "sendfile"), "pread"),
        server_field=r.get(t, p, "server_field", _server_field, SERVER_FIELD),
        tls_listen=r.get(t, p, "tls_listen", _listen_list, ()),
        tls=read_tls(r, t, p, base),
    )


def check_listeners(r: _Reader, cfg: Config) -> None:
    """server.proxy_protocol names plain listeners: on an HTTPS one the header would come before the TLS
    handshake, which the TLS layer would take for a broken ClientHello. HTTPS listeners need a certificate. The
    admin listener and the demo origin have addresses of their own."""
    for addr in cfg.proxy_protocol:
        if addr in cfg.tls_listen:
            r.problem("server.proxy_protocol", f"{addr} is an HTTPS listener: PROXY protocol is only for plain ones")
        elif addr not in cfg.listen:
            r.problem("server.proxy_protocol", f"{addr} is not one of server.listen")
    if cfg.proxy_protocol_from and not cfg.proxy_protocol:
        r.problem("server.proxy_protocol_from", "no listener expects a PROXY header (server.proxy_protocol)")
    elif cfg.proxy_protocol and not cfg.proxy_protocol_from:
        who = "empty, so any address that reaches a PROXY listener may name any client"
        why = "(site ACLs, rate limits, tokens bound to a client and the access log believe it): list the balancers"
        r.warn("server.proxy_protocol_from", f"{who} {why}")
    if cfg.tls_listen and cfg.tls is None and not any(s.tls for s in cfg.sites):
        r.problem("server.tls_listen", "needs a certificate: [server.tls] or a [sites.tls] table")
    clients = [("server.listen", cfg.listen), ("server.tls_listen", cfg.tls_listen)]
    _check_clients(r, clients)
    if cfg.admin is not None:
        check_admin(r, "admin.listen", cfg.admin, clients)
    if cfg.demo_origin is not None:
        admin = [("admin.listen", (cfg.admin,))] if cfg.admin is not None else []
        check_admin(r, "demo.origin", cfg.demo_origin, [*clients, *admin], "the demo origin")


def _check_clients(r: _Reader, clients: list[tuple[str, tuple[Listen, ...]]]) -> None:
    """No two client listeners on one socket: one worker cannot bind the second (`Address already in use`, as if
    another process held it); several (SO_REUSEPORT) bind both, and the kernel spreads connections over them, a
    plain one's to the TLS socket as often as not."""
    seen: list[tuple[str, Listen]] = []
    for key, addrs in clients:
        for addr in addrs:
            other = next(((k, a) for k, a in seen if _shares_socket(addr, a)), None)
            if other is not None:
                r.problem(key, f"{addr} is also {other[0]} ({other[1]}): give each listener an address of its own")
            seen.append((key, addr))


def check_admin(
    r: _Reader,
    key: str,
    admin: Listen,
    listeners: list[tuple[str, tuple[Listen, ...]]],
    what: str = "the admin API",
) -> None:
    """The admin listener (and the demo origin, `what`) binds after the client ones, in worker 0: on one of their
    sockets it would fail every time."""
    for other, addrs in listeners:
        for addr in addrs:
            if _shares_socket(admin, addr):
                r.problem(key, f"{admin} is also {other} ({addr}): give {what} an address of its own")
                return


def _shares_socket(a: Listen, b: Listen) -> bool:
    """Whether one of two listeners cannot bind once the other has: the same port, and the same address, or one
    of them the wildcard of the other's IP version (IPv6 sockets are bound IPv6 only, listeners._bind). Names are
    not looked up: two names, or a name and an address, clash only when spelled alike."""
    if a.port != b.port:
        return False
    ip_a, ip_b = _ip(a.host), _ip(b.host)
    if ip_a is None or ip_b is None:
        return a.host.lower() == b.host.lower()
    return ip_a == ip_b or (ip_a.version == ip_b.version and (ip_a.is_unspecified or ip_b.is_unspecified))


def _ip(host: str) -> IPv4Address | IPv6Address | None:
    try:
        return ip_address(host)
    except ValueError:
        return None


def _watch_config(v: Any) -> float:
    """`server.watch_config`: seconds between two looks at the config file (configwatch); 0: never looked at."""
    seconds = _seconds(v)
    if seconds != 0 and not 1 <= seconds <= MAX_WATCH:
        raise ValueError(f"expected 0 (off) or seconds between 1 and {MAX_WATCH:.0f}")
    return seconds


# server.reload_timeout: how long a reload waits for its read of the config file (edgecache.readoff).
_reload_timeout = seconds_between(1, MAX_WATCH)


def _server_field(v: Any) -> str:
    """`server.server_field`: the Server field's value, product tokens (edgecache, edgecache/2.1), or "" for none."""
    if not isinstance(v, str):
        raise ValueError('expected a string such as "edgecache", or "" for no Server field')
    if any(c < " " or c == "\x7f" for c in v):
        raise ValueError("has a control character: a field value cannot carry one (RFC 9110 5.5)")
    if len(v) > MAX_SERVER_FIELD:
        raise ValueError(f"expected at most {MAX_SERVER_FIELD} characters")
    if v and not _PRODUCTS.fullmatch(v):
        raise ValueError(
            f"{v!r} is not product tokens such as edgecache or edgecache/2.1 (letters, digits and !#$%&'*+-.^_`|~; "
            'a version after "/"; one space between two), or "" for no Server field'
        )
    return v


def _burst(v: Any) -> float:
    """`server.burst`: a bucket below one token never lets a request in (core.ratelimit)."""
    n = _positive(float)(v)
    if n < 1:
        raise ValueError(
            "expected at least 1 (requests a client may make at once): below it, no request of any client is ever "
            "let in"
        )
    return float(n)


def _workers(v: Any) -> int:
    """`server.workers`: processes serving the listeners, one per core at most is useful."""
    n = _positive(int)(v)
    if n > MAX_WORKERS:
        raise ValueError(f"expected a number of worker processes between 1 and {MAX_WORKERS}")
    return int(n)


# server.drain, bounded so that a typo (36000 for 3600) cannot keep a stopping node up for half a day. Whatever waits on
# the stop (systemd's TimeoutStopSec, Kubernetes' terminationGracePeriodSeconds) must wait longer than drain +
# supervisor.KILL_AFTER, or it kills the workers first.
_drain = seconds_between(0, MAX_DRAIN)


def _listen_list(v: Any) -> tuple[Listen, ...]:
    return tuple(parse_listen(x) for x in _str_list(str)(v))
