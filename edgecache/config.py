"""Configuration: TOML in, frozen dataclasses out. Every problem names the file, the key and what is wrong.

Validation collects all problems before failing, like `nginx -t`, so an operator fixes a file in one pass.
"""

from __future__ import annotations

import math
import re
import ssl
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from edgecache.core.freshness import Policy
from edgecache.core.ring import Member
from edgecache.errors import ConfigError

T = TypeVar("T")

# Matched whole and ASCII only: `$` lets a trailing newline through, and \d takes other scripts' digits.
_SIZE = re.compile(r"[ \t]*([0-9]+(?:\.[0-9]+)?)[ \t]*([kmgt]?)(i?b?)[ \t]*", re.IGNORECASE | re.ASCII)
_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TLSFiles:
    cert: Path  # PEM certificate chain
    key: Path  # PEM private key


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    hosts: tuple[str, ...]
    origins: tuple[str, ...]
    key_query: tuple[str, ...] = ("*",)  # query parameters that are part of the key; "*" = all of them
    origin_host: str | None = None  # Host sent to origin; None = the client's Host
    policy: Policy = field(default_factory=Policy)  # the choices RFC 9111 leaves to a shared cache
    allow: tuple[IPv4Network | IPv6Network, ...] = ()  # client subnets served (the ISP's customers); empty: all
    tls: TLSFiles | None = None  # the certificate its HTTPS clients get (chosen by SNI)

    def allows(self, client: str) -> bool:
        if not self.allow:
            return True
        try:
            address = ip_address(client)
        except ValueError:
            return False
        return any(address in net for net in self.allow)


@dataclass(frozen=True, slots=True)
class CacheSettings:
    dir: Path
    memory_bytes: int = 256 * 2**20
    disk_bytes: int = 4 * 2**30
    slice_bytes: int = 2**20
    fill_slices: int = 4  # most slices one origin request may fill
    memory_policy: str = "s3fifo"
    # A worker's RSS is kept within memory_bytes + this by shrinking the memory tier (to half at most); 0: off.
    memory_headroom: int = 64 * 2**20


@dataclass(frozen=True, slots=True)
class OriginSettings:
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_connections: int = 256


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer token of the admin API: an operator's (everything) or a provider's (its own sites)."""

    name: str  # for logs; the secret itself is never logged
    secret: str = field(repr=False)
    role: str = "provider"  # "operator" or "provider"
    sites: tuple[str, ...] = ()

    def may_act_on(self, site: str) -> bool:
        return self.role == "operator" or site in self.sites


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    self_id: str
    nodes: tuple[Member, ...] = ()
    rise: int = 2
    fall: int = 3
    interval: float = 1.0  # seconds between active health checks
    timeout: float = 1.0
    dns: str | None = None  # NAME:PORT whose A/AAAA records list the nodes (a Kubernetes headless service)
    dns_interval: float = 10.0


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    listen: tuple[Listen, ...]
    cache: CacheSettings
    origin: OriginSettings
    sites: tuple[Site, ...]
    workers: int = 1
    client_write_timeout: float = 60.0  # a client that takes no bytes for this long loses its connection
    max_requests: int = 10_000  # requests in flight per worker before new ones get 503
    max_connections: int = 20_000  # open client connections per worker before new ones get 503 and close
    fast_path: bool = True  # fresh hits answered before the web framework is involved
    header_timeout: float = 10.0  # a request head must be complete this long after its first byte (slowloris)
    idle_timeout: float = 75.0  # an idle keep-alive connection is closed after this long
    disk_send: str = "pread"  # disk hits on the fast path: "pread" (never blocks the loop) or "sendfile"
    tls_listen: tuple[Listen, ...] = ()  # HTTPS listeners; certificates per site by SNI
    tls: TLSFiles | None = None  # for clients that send no (or an unknown) server name
    rate_limit: float | None = None  # requests per second per client address (429 past it); None: no limit
    burst: float | None = None  # requests a client may make at once (default: one second's worth)
    demo_origin: Listen | None = None
    admin: Listen | None = None  # the admin listener (metrics, health, APIs); keep it on a private address
    access_log: Path | None = None
    cluster: ClusterSettings | None = None
    tokens: tuple[Token, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def parse_size(value: object) -> int:
    """'256MiB', '1g', '4096' or an int -> bytes. K/M/G/T and KiB.. are binary; KB/MB/GB are decimal."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 256MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as 256MiB")
    m = _SIZE.fullmatch(value)
    if not m:
        raise ValueError(f"{value!r} is not a size such as 256MiB")
    if len(m.group(1)) > 20:
        raise ValueError(f"{value[:40]!r}... is not a size such as 256MiB")
    number, unit, suffix = float(m.group(1)), m.group(2).lower(), m.group(3).lower()
    power = "kmgt".index(unit) + 1 if unit else 0
    base = 1000 if suffix == "b" and unit else 1024
    return int(number * base**power)


def parse_listen(value: object) -> Listen:
    if not isinstance(value, str) or ":" not in value:
        raise ValueError("expected HOST:PORT such as 127.0.0.1:8080")
    host, _, port_s = value.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"{value!r}: port must be 1-65535")
    return Listen(host, int(port_s))


def check_origin_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected an origin URL such as http://10.0.0.1:8080")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL with a host")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: an origin URL has no query or fragment")
    return value.rstrip("/")


def check_host_pattern(value: object) -> str:
    if not isinstance(value, str) or not value.isascii() or not _HOST.fullmatch(value.lower()):
        raise ValueError(f"{value!r} is not a host name or *.wildcard")
    return value.lower()


class _Reader:
    """Reads typed values out of a TOML table, collecting 'file: key: problem' lines instead of stopping."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.source}: {key}: {message}")

    def get(self, table: dict[str, Any], prefix: str, name: str, convert: Callable[[Any], T], default: T) -> T:
        if name not in table:
            return default
        try:
            return convert(table[name])
        except (ValueError, TypeError, OverflowError) as exc:
            # One line, even when the message quotes a value with a newline in it.
            self.problem(f"{prefix}{name}", str(exc).replace("\n", "\\n")[:300])
            return default

    def table(self, parent: dict[str, Any], name: str) -> dict[str, Any]:
        value = parent.get(name, {})
        if not isinstance(value, dict):
            self.problem(name, "expected a table")
            return {}
        return value

    def unknown(self, table: dict[str, Any], prefix: str, known: set[str]) -> None:
        for key in sorted(set(table) - known):
            shown = key if key.isprintable() and key.strip() else repr(key)
            self.problem(f"{prefix}{shown}", "unknown key")


def _choice(*allowed: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in allowed:
            raise ValueError("must be one of " + ", ".join(repr(a) for a in allowed))
        return str(v)

    return check


def _positive(kind: type[int] | type[float]) -> Callable[[Any], Any]:
    def convert(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int | float) or (kind is int and not isinstance(v, int)):
            raise ValueError(f"expected a positive {kind.__name__}")
        if v <= 0 or not math.isfinite(v):
            raise ValueError("must be positive and finite")
        return kind(v)

    return convert


def _str_list(convert: Callable[[Any], str]) -> Callable[[Any], tuple[str, ...]]:
    def inner(v: Any) -> tuple[str, ...]:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list):
            raise ValueError("expected a list of strings")
        return tuple(convert(item) for item in v)

    return inner


def _name(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v):
        raise ValueError("expected a name of letters, digits, '_', '.' or '-'")
    return v


def _node_id(v: Any) -> str:
    # Names such as "node1", or addresses such as "10.0.0.5:8080" when membership comes from DNS.
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9_.:\[\]-]{1,80}", v):
        raise ValueError("expected a node id of letters, digits, '_', '.', ':' or '-'")
    return v


def _key_param(v: Any) -> str:
    if not isinstance(v, str) or not v or not v.isprintable() or not v.isascii():
        raise ValueError("expected a query parameter name or '*'")
    return v


def _origin_host(v: Any) -> str | None:
    if not v:
        return None
    if not isinstance(v, str):
        raise ValueError("expected a host name, optionally with :port")
    host, _, port = v.rpartition(":") if v.count(":") == 1 else (v, "", "")
    if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{v!r} has an invalid port")
    check_host_pattern(host)
    if host.startswith("*"):
        raise ValueError(f"{v!r} is a wildcard, not a host name")
    return v


def _cache(r: _Reader, doc: dict[str, Any], base: Path) -> CacheSettings:
    t = r.table(doc, "cache")
    r.unknown(t, "cache.", {"dir", "memory", "disk", "slice", "fill_slices", "memory_policy", "memory_headroom"})
    directory = r.get(t, "cache.", "dir", lambda v: Path(str(v)), Path("var/cache"))
    directory = directory if directory.is_absolute() else base / directory
    settings = CacheSettings(
        dir=directory,
        memory_bytes=r.get(t, "cache.", "memory", parse_size, 256 * 2**20),
        disk_bytes=r.get(t, "cache.", "disk", parse_size, 4 * 2**30),
        slice_bytes=r.get(t, "cache.", "slice", parse_size, 2**20),
        fill_slices=r.get(t, "cache.", "fill_slices", _positive(int), 4),
        memory_policy=r.get(t, "cache.", "memory_policy", str, "s3fifo"),
        memory_headroom=r.get(t, "cache.", "memory_headroom", parse_size, 64 * 2**20),
    )
    if not 4096 <= settings.slice_bytes <= 64 * 2**20:
        r.problem("cache.slice", "must be between 4KiB and 64MiB")
    if settings.memory_policy not in ("s3fifo", "lru"):
        r.problem("cache.memory_policy", "must be 's3fifo' or 'lru'")
    if settings.disk_bytes < settings.slice_bytes * 16:
        r.problem("cache.disk", "must hold at least 16 slices")
    return settings


def _origin(r: _Reader, doc: dict[str, Any]) -> OriginSettings:
    t = r.table(doc, "origin")
    r.unknown(t, "origin.", {"connect_timeout", "read_timeout", "max_connections"})
    return OriginSettings(
        connect_timeout=r.get(t, "origin.", "connect_timeout", _positive(float), 5.0),
        read_timeout=r.get(t, "origin.", "read_timeout", _positive(float), 30.0),
        max_connections=r.get(t, "origin.", "max_connections", _positive(int), 256),
    )


def _networks(v: Any) -> tuple[IPv4Network | IPv6Network, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError('expected a list of subnets such as ["10.0.0.0/8", "2001:db8::/32"]')
    nets = []
    for x in v:
        try:
            nets.append(ip_network(x, strict=False))
        except ValueError:
            raise ValueError(f"{x!r} is not a subnet") from None
    return tuple(nets)


def _seconds(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or not math.isfinite(v):
        raise ValueError("expected seconds (a finite number >= 0)")
    return float(v)


def _policy(r: _Reader, site: dict[str, Any], prefix: str) -> Policy:
    t = r.table(site, "cache") if "cache" in site else {}
    p = f"{prefix}cache."
    r.unknown(t, p, {"min_ttl", "max_ttl", "heuristic_fraction", "heuristic_max", "store_set_cookie", "max_stale"})
    policy = Policy(
        heuristic_fraction=r.get(t, p, "heuristic_fraction", _seconds, 0.1),
        heuristic_max=r.get(t, p, "heuristic_max", _seconds, 86400.0),
        store_set_cookie=r.get(t, p, "store_set_cookie", _bool, False),
        min_ttl=r.get(t, p, "min_ttl", _seconds, None),
        max_ttl=r.get(t, p, "max_ttl", _seconds, None),
        max_stale_ceiling=r.get(t, p, "max_stale", _seconds, 86400.0),
    )
    if policy.heuristic_fraction > 1:
        r.problem(f"{p}heuristic_fraction", "must be between 0 and 1")
    if policy.min_ttl is not None and policy.max_ttl is not None and policy.min_ttl > policy.max_ttl:
        r.problem(f"{p}min_ttl", "must not exceed max_ttl")
    return policy


def _member(r: _Reader, t: Any, p: str) -> Member | None:
    if not isinstance(t, dict):
        r.problem(p.rstrip("."), "expected a table")
        return None
    r.unknown(t, p, {"id", "address", "admin", "weight"})
    for req in ("id", "address"):
        if req not in t:
            r.problem(f"{p}{req}", "is required")
    address = r.get(t, p, "address", parse_listen, None)
    admin = r.get(t, p, "admin", parse_listen, None)
    return Member(
        id=r.get(t, p, "id", _node_id, "?"),
        address=str(address) if address else "",
        weight=r.get(t, p, "weight", _positive(float), 1.0),
        admin=str(admin) if admin else None,
    )


def _cluster(r: _Reader, doc: dict[str, Any]) -> ClusterSettings | None:
    t = r.table(doc, "cluster")
    p = "cluster."
    r.unknown(t, p, {"self", "nodes", "rise", "fall", "interval", "timeout", "dns", "dns_interval"})
    raw_nodes = t.get("nodes", [])
    if not isinstance(raw_nodes, list):
        r.problem(f"{p}nodes", "expected [[cluster.nodes]] tables")
        raw_nodes = []
    nodes = tuple(m for i, n in enumerate(raw_nodes) if (m := _member(r, n, f"{p}nodes[{i}].")))
    settings = ClusterSettings(
        self_id=r.get(t, p, "self", _node_id, ""),
        nodes=nodes,
        rise=r.get(t, p, "rise", _positive(int), 2),
        fall=r.get(t, p, "fall", _positive(int), 3),
        interval=r.get(t, p, "interval", _positive(float), 1.0),
        timeout=r.get(t, p, "timeout", _positive(float), 1.0),
        dns=r.get(t, p, "dns", lambda v: str(parse_listen(v)), None),
        dns_interval=r.get(t, p, "dns_interval", _positive(float), 10.0),
    )
    if not settings.self_id:
        r.problem(f"{p}self", "is required: the id of this node")
    if not nodes and settings.dns is None:
        r.problem(f"{p}nodes", "name the nodes, or set cluster.dns")
    ids = [n.id for n in nodes]
    if len(set(ids)) != len(ids):
        r.problem(f"{p}nodes", "node ids must be unique")
    if nodes and settings.self_id and settings.self_id not in ids:
        r.problem(f"{p}self", f"{settings.self_id!r} is not one of the nodes")
    return settings


def _tokens(r: _Reader, admin: dict[str, Any], base: Path) -> tuple[Token, ...]:
    raw = admin.get("tokens", [])
    if not isinstance(raw, list):
        r.problem("admin.tokens", "expected [[admin.tokens]] tables")
        return ()
    tokens = []
    for i, t in enumerate(raw):
        p = f"admin.tokens[{i}]."
        if not isinstance(t, dict):
            r.problem(p.rstrip("."), "expected a table")
            continue
        r.unknown(t, p, {"name", "token", "token_file", "role", "sites"})
        secret = _secret(r, t, p, base)
        role = r.get(t, p, "role", str, "provider")
        if role not in ("operator", "provider"):
            r.problem(f"{p}role", "must be 'operator' or 'provider'")
        sites: tuple[str, ...] = r.get(t, p, "sites", _str_list(_name), ())
        if role == "provider" and not sites:
            r.problem(f"{p}sites", "a provider token must name the sites it may act on")
        tokens.append(Token(r.get(t, p, "name", _name, f"token{i}"), secret, role, sites))
    if len({t.secret for t in tokens}) != len(tokens):
        r.problem("admin.tokens", "two tokens have the same secret")
    return tuple(tokens)


def _secret(r: _Reader, t: dict[str, Any], p: str, base: Path) -> str:
    if ("token" in t) == ("token_file" in t):
        r.problem(f"{p}token", "give exactly one of token and token_file")
        return ""
    if "token_file" in t:
        path = Path(str(t["token_file"]))
        path = path if path.is_absolute() else base / path
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path, a file that is not UTF-8
            reason = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
            r.problem(f"{p}token_file", f"cannot read {str(path)!r}: {reason}")
            return ""
    else:
        secret = str(t["token"])
    if len(secret) < 16:
        r.problem(f"{p}token", "must be at least 16 characters")
    return secret


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("expected true or false")
    return v


def _tls(r: _Reader, t: dict[str, Any], p: str, base: Path) -> TLSFiles | None:
    raw = t.get("tls")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        r.problem(f"{p}tls", "expected a table with cert and key")
        return None
    r.unknown(raw, f"{p}tls.", {"cert", "key"})
    paths = []
    for name in ("cert", "key"):
        value = raw.get(name)
        if not isinstance(value, str) or not value:
            r.problem(f"{p}tls.{name}", "expected the path of a PEM file")
            return None
        path = Path(value)
        paths.append(path if path.is_absolute() else base / path)
    files = TLSFiles(paths[0], paths[1])
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        r.problem(f"{p}tls", f"cannot load certificate {files.cert} with key {files.key}: {exc}")
        return None
    return files


def _sites(r: _Reader, doc: dict[str, Any], base: Path) -> tuple[Site, ...]:
    raw = doc.get("sites", [])
    if not isinstance(raw, list) or not raw:
        r.problem("sites", "expected at least one [[sites]] table")
        return ()
    sites: list[Site] = []
    seen_hosts: dict[str, str] = {}
    for i, t in enumerate(raw):
        p = f"sites[{i}]."
        if not isinstance(t, dict):
            r.problem(f"sites[{i}]", "expected a table")
            continue
        r.unknown(t, p, {"name", "hosts", "origins", "key_query", "origin_host", "cache", "allow", "tls"})
        for req in ("name", "hosts", "origins"):
            if req not in t:
                r.problem(f"{p}{req}", "is required")
        site = Site(
            name=r.get(t, p, "name", _name, f"site{i}"),
            hosts=r.get(t, p, "hosts", _str_list(check_host_pattern), ()),
            origins=r.get(t, p, "origins", _str_list(check_origin_url), ()),
            key_query=r.get(t, p, "key_query", _str_list(_key_param), ("*",)),
            origin_host=r.get(t, p, "origin_host", _origin_host, None),
            policy=_policy(r, t, p),
            allow=r.get(t, p, "allow", _networks, ()),
            tls=_tls(r, t, p, base),
        )
        reported = "\n".join(r.problems)
        if "hosts" in t and not site.hosts and f"{p}hosts:" not in reported:
            r.problem(f"{p}hosts", "must name at least one host")
        if "origins" in t and not site.origins and f"{p}origins:" not in reported:
            r.problem(f"{p}origins", "must name at least one origin URL")
        for h in site.hosts:
            if h in seen_hosts:
                r.problem(f"{p}hosts", f"{h!r} is already served by site {seen_hosts[h]!r}")
            seen_hosts[h] = site.name
        sites.append(site)
    return tuple(sites)


def build(doc: dict[str, Any], source: str, base: Path) -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    r = _Reader(source)
    r.unknown(doc, "", {"server", "cache", "origin", "sites", "demo", "admin", "log", "cluster"})
    server = r.table(doc, "server")
    r.unknown(
        server,
        "server.",
        {
            "listen",
            "workers",
            "client_write_timeout",
            "max_requests",
            "max_connections",
            "rate_limit",
            "burst",
            "fast_path",
            "header_timeout",
            "idle_timeout",
            "disk_send",
            "tls_listen",
            "tls",
        },
    )
    listen: tuple[Listen, ...] = r.get(
        server, "server.", "listen", lambda v: tuple(parse_listen(x) for x in _str_list(str)(v)), ()
    )
    if not listen:
        listen = (Listen("127.0.0.1", 8080),)
    workers = r.get(server, "server.", "workers", _positive(int), 1)
    write_timeout = r.get(server, "server.", "client_write_timeout", _positive(float), 60.0)
    max_requests = r.get(server, "server.", "max_requests", _positive(int), 10_000)
    max_connections = r.get(server, "server.", "max_connections", _positive(int), 20_000)
    rate_limit = r.get(server, "server.", "rate_limit", _positive(float), None)
    burst = r.get(server, "server.", "burst", _positive(float), None)
    fast_path = r.get(server, "server.", "fast_path", _bool, True)
    header_timeout = r.get(server, "server.", "header_timeout", _positive(float), 10.0)
    idle_timeout = r.get(server, "server.", "idle_timeout", _positive(float), 75.0)
    disk_send = r.get(server, "server.", "disk_send", _choice("pread", "sendfile"), "pread")
    tls_listen: tuple[Listen, ...] = r.get(
        server, "server.", "tls_listen", lambda v: tuple(parse_listen(x) for x in _str_list(str)(v)), ()
    )
    default_tls = _tls(r, server, "server.", base)
    demo = r.table(doc, "demo")
    r.unknown(demo, "demo.", {"origin"})
    demo_origin = r.get(demo, "demo.", "origin", parse_listen, None)
    admin = r.table(doc, "admin")
    r.unknown(admin, "admin.", {"listen", "tokens"})
    logs = r.table(doc, "log")
    r.unknown(logs, "log.", {"access"})
    access = r.get(logs, "log.", "access", lambda v: Path(str(v)), None)
    cfg = Config(
        source=source,
        listen=listen,
        cache=_cache(r, doc, base),
        origin=_origin(r, doc),
        sites=_sites(r, doc, base),
        workers=workers,
        client_write_timeout=write_timeout,
        max_requests=max_requests,
        max_connections=max_connections,
        rate_limit=rate_limit,
        burst=burst,
        fast_path=fast_path,
        header_timeout=header_timeout,
        idle_timeout=idle_timeout,
        disk_send=disk_send,
        tls_listen=tls_listen,
        tls=default_tls,
        demo_origin=demo_origin,
        admin=r.get(admin, "admin.", "listen", parse_listen, None),
        access_log=access if access is None or access.is_absolute() else base / access,
        cluster=_cluster(r, doc) if "cluster" in doc else None,
        tokens=_tokens(r, admin, base),
    )
    if cfg.tls_listen and cfg.tls is None and not any(s.tls for s in cfg.sites):
        r.problem("server.tls_listen", "needs a certificate: [server.tls] or a [sites.tls] table")
    known_sites = {s.name for s in cfg.sites}
    for i, tok in enumerate(cfg.tokens):
        for name in tok.sites:
            if name not in known_sites:
                r.problem(f"admin.tokens[{i}].sites", f"{name!r} is not a configured site")
    if r.problems:
        raise ConfigError(r.problems)
    return cfg


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: -: cannot read: {exc.strerror}"]) from exc
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: -: not UTF-8 text"]) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{p}: -: invalid TOML: {exc}"]) from exc
    except (ValueError, RecursionError) as exc:  # an integer too long to convert, arrays nested too deep
        raise ConfigError([f"{p}: -: invalid TOML: {type(exc).__name__}: {str(exc)[:200]}"]) from exc
    return build(doc, str(p), p.resolve().parent)


def one_origin(
    origin: str, listen: str, cache_dir: str, admin: str | None = None, access_log: str | None = None, **cache: int
) -> Config:
    """The `serve --origin` mode: every Host goes to one origin (like `varnishd -b`)."""
    r = _Reader("command line")
    origin_url = r.get({"origin": origin}, "--", "origin", check_origin_url, "")
    addr = r.get({"listen": listen}, "--", "listen", parse_listen, Listen("127.0.0.1", 8080))
    admin_addr = r.get({"admin": admin} if admin else {}, "--", "admin", parse_listen, None)
    if r.problems:
        raise ConfigError(r.problems)
    settings = CacheSettings(dir=Path(cache_dir), **cache)  # type: ignore[arg-type]
    site = Site(name="origin", hosts=("*",), origins=(origin_url,))
    return Config(
        source="command line",
        listen=(addr,),
        cache=settings,
        origin=OriginSettings(),
        sites=(site,),
        admin=admin_addr,
        access_log=Path(access_log) if access_log else None,
    )
