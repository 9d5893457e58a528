"""Configuration: TOML in, frozen dataclasses out. Every problem names the file, the key and what is wrong.

Validation collects all problems before failing, like `nginx -t`, so an operator fixes a file in one pass.
"""

from __future__ import annotations

import os
import socket
import ssl
import tomllib
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

from edgecache.config.model import (
    CacheSettings,
    ClusterSettings,
    Config,
    Disk,
    Listen,
    OriginSettings,
    Site,
    TLSFiles,
    Token,
)
from edgecache.config.values import (
    _bool,
    _choice,
    _key_param,
    _name,
    _networks,
    _node_id,
    _origin_host,
    _positive,
    _Reader,
    _seconds,
    _str_list,
    check_forward_field,
    check_host_pattern,
    check_origin_url,
    check_watchdog,
    parse_listen,
    parse_size,
)
from edgecache.core import nodeid
from edgecache.core.freshness import Policy
from edgecache.core.hop import MIN_KEY
from edgecache.core.ring import Member
from edgecache.core.signing import PARAM_CHARS, Signing
from edgecache.errors import ConfigError

__all__ = [
    "KEYS",
    "CacheSettings",
    "ClusterSettings",
    "Config",
    "Listen",
    "OriginSettings",
    "Site",
    "TLSFiles",
    "Token",
    "build",
    "check_host_pattern",
    "check_origin_url",
    "check_watchdog",
    "load",
    "one_origin",
    "parse_listen",
    "parse_size",
]


# Every key each table of the file takes, by the table's place in it; any other is reported as unknown. The config
# fuzzer (loadtest/fuzz_targets.py) draws its documents from the same lists.
KEYS: dict[str, frozenset[str]] = {
    key: frozenset(names.split())
    for key, names in {
        "": "server cache origin sites demo admin log cluster",
        "server": "listen workers client_write_timeout max_requests max_connections rate_limit burst fast_path "
        "proxy_protocol proxy_protocol_from trusted_forwarders "
        "header_timeout idle_timeout disk_send tls_listen tls watchdog drain watch_config",
        "tls": "cert key",
        "cache": "dir memory disk disks slice fill_slices memory_policy memory_headroom",
        "cache.disks": "path size",
        "origin": "connect_timeout read_timeout max_connections body_timeout body_connections",
        "sites": "name hosts origins key_query origin_host forward_fields cache allow tls signing",
        "sites.signing": "secrets secret_file expires_param signature_param prefix_param client",
        "sites.cache": "min_ttl max_ttl heuristic_fraction heuristic_max store_set_cookie max_stale",
        "cluster": "self nodes rise fall interval timeout dns dns_interval key key_file",
        "cluster.nodes": "id address admin weight",
        "admin": "listen tokens job_retention max_jobs prefetch_slots",
        "admin.tokens": "name token token_file role sites",
        "demo": "origin",
        "log": "access",
    }.items()
}


def _cache(r: _Reader, doc: dict[str, Any], base: Path) -> CacheSettings:
    t = r.table(doc, "cache")
    r.unknown(t, "cache.", KEYS["cache"])
    directory = r.get(t, "cache.", "dir", lambda v: Path(str(v)), Path("var/cache"))
    directory = directory if directory.is_absolute() else base / directory
    disk_bytes = r.get(t, "cache.", "disk", parse_size, 4 * 2**30)
    disks = _disks(r, t, base) if "disks" in t else ()
    if disks:
        directory, disk_bytes = disks[0].path, sum(d.size for d in disks)
    settings = CacheSettings(
        dir=directory,
        memory_bytes=r.get(t, "cache.", "memory", parse_size, 256 * 2**20),
        disk_bytes=disk_bytes,
        slice_bytes=r.get(t, "cache.", "slice", parse_size, 2**20),
        fill_slices=r.get(t, "cache.", "fill_slices", _positive(int), 4),
        memory_policy=r.get(t, "cache.", "memory_policy", str, "s3fifo"),
        memory_headroom=r.get(t, "cache.", "memory_headroom", parse_size, 64 * 2**20),
        disks=disks,
    )
    if not 4096 <= settings.slice_bytes <= 64 * 2**20:
        r.problem("cache.slice", "must be between 4KiB and 64MiB")
    if settings.memory_policy not in ("s3fifo", "lru"):
        r.problem("cache.memory_policy", "must be 's3fifo' or 'lru'")
    for i, d in enumerate(settings.all_disks):
        if d.size < settings.slice_bytes * 16:
            r.problem(f"cache.disks[{i}].size" if disks else "cache.disk", "must hold at least 16 slices")
    return settings


_DISKS_FORM = 'an array of tables such as [{path = "/srv/cache1", size = "900GiB"}, ...]'


def _disks(r: _Reader, t: dict[str, Any], base: Path) -> tuple[Disk, ...]:
    """cache.disks: every directory its own (never the same one twice, never one inside another)."""
    raw = t["disks"]
    for single in ("dir", "disk"):
        if single in t:
            r.problem(f"cache.{single}", "give cache.disks, or cache.dir and cache.disk (one disk), not both")
    if not isinstance(raw, list) or not raw:
        r.problem("cache.disks", f"expected {_DISKS_FORM}")
        return ()
    disks: list[Disk] = []
    for i, entry in enumerate(raw):
        p = f"cache.disks[{i}]."
        if not isinstance(entry, dict):
            r.problem(p.rstrip("."), "expected a table {path = ..., size = ...}")
            continue
        r.unknown(entry, p, KEYS["cache.disks"])
        for req in ("path", "size"):
            if req not in entry:
                r.problem(f"{p}{req}", "is required")
        path = r.get(entry, p, "path", _directory(base), None)
        size = r.get(entry, p, "size", parse_size, None)
        if path is None:
            continue
        for j, other in enumerate(disks):
            if path == other.path:
                r.problem(f"{p}path", f"{str(path)!r} is also cache.disks[{j}]: give each disk once")
            elif path.is_relative_to(other.path) or other.path.is_relative_to(path):
                r.problem(f"{p}path", f"{str(path)!r} and cache.disks[{j}] ({str(other.path)!r}) are nested")
        disks.append(Disk(path, size if size is not None else -1))
    # Only a list read whole is used (and its sizes checked): a problem above already fails the file.
    return tuple(disks) if len(disks) == len(raw) and all(d.size >= 0 for d in disks) else ()


def _directory(base: Path) -> Callable[[Any], Path]:
    def convert(v: Any) -> Path:
        if not isinstance(v, str) or not v.strip() or "\x00" in v:
            raise ValueError("expected a directory path")
        path = Path(os.path.normpath(v))
        return path if path.is_absolute() else Path(os.path.normpath(base / path))

    return convert


def _origin(r: _Reader, doc: dict[str, Any]) -> OriginSettings:
    t = r.table(doc, "origin")
    r.unknown(t, "origin.", KEYS["origin"])
    return OriginSettings(
        connect_timeout=r.get(t, "origin.", "connect_timeout", _positive(float), 5.0),
        read_timeout=r.get(t, "origin.", "read_timeout", _positive(float), 30.0),
        max_connections=r.get(t, "origin.", "max_connections", _positive(int), 256),
        body_timeout=r.get(t, "origin.", "body_timeout", _positive(float), 30.0),
        body_connections=r.get(t, "origin.", "body_connections", _positive(int), 64),
    )


def _policy(r: _Reader, site: dict[str, Any], prefix: str) -> Policy:
    t = r.table(site, "cache") if "cache" in site else {}
    p = f"{prefix}cache."
    r.unknown(t, p, KEYS["sites.cache"])
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
    r.unknown(t, p, KEYS["cluster.nodes"])
    for req in ("id", "address"):
        if req not in t:
            r.problem(f"{p}{req}", "is required")
    address = r.get(t, p, "address", parse_listen, None)
    admin = r.get(t, p, "admin", parse_listen, None)
    return Member(
        id=r.get(t, p, "id", _node_id, "?"),
        address=nodeid.canonical(str(address)) if address else "",  # an IPv6 one in brackets, to put in a URL
        weight=r.get(t, p, "weight", _positive(float), 1.0),
        admin=nodeid.canonical(str(admin)) if admin else None,
    )


_MAKE_KEY = "make one with `openssl rand -hex 32` and give every node the same"


def _cluster_key(r: _Reader, t: dict[str, Any], p: str, base: Path, alone: bool) -> bytes:
    """`key`, or `key_file` (a file holding it, such as a mounted Kubernetes Secret). Required unless the cluster
    is this node alone: a node honours a forwarded request's hop field only when it is signed with this key."""
    if "key" in t and "key_file" in t:
        r.problem(f"{p}key", "give one of key and key_file, not both")
        return b""
    if "key_file" in t:
        text = _read_file(r, f"{p}key_file", t["key_file"], base)
        if text is None:
            return b""
        key, name = text.strip(), "key_file"
    elif "key" in t:
        key, name = t["key"] if isinstance(t["key"], str) else "", "key"
    elif alone:
        return b""
    else:
        r.problem(f"{p}key", f"a cluster of several nodes needs a shared key to sign forwarded requests: {_MAKE_KEY}")
        return b""
    if len(key) < MIN_KEY or not key.isascii() or not key.isprintable():
        r.problem(f"{p}{name}", f"must be at least {MIN_KEY} printable ASCII characters: {_MAKE_KEY}")
        return b""
    return key.encode("ascii")


def _cluster(r: _Reader, doc: dict[str, Any], base: Path) -> ClusterSettings | None:
    t = r.table(doc, "cluster")
    p = "cluster."
    r.unknown(t, p, KEYS["cluster"])
    raw_nodes = t.get("nodes", [])
    if not isinstance(raw_nodes, list):
        r.problem(f"{p}nodes", "expected [[cluster.nodes]] tables")
        raw_nodes = []
    nodes = tuple(m for i, n in enumerate(raw_nodes) if (m := _member(r, n, f"{p}nodes[{i}].")))
    named = t if "self" in t or "dns" not in t else {"self": _host_id()}
    settings = ClusterSettings(
        self_id=r.get(named, p, "self", _node_id, ""),
        key=_cluster_key(r, t, p, base, alone=len(nodes) <= 1 and "dns" not in t),
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


def _host_id() -> str:
    """cluster.self when DNS lists the members and the file does not say: this machine's host name, which in a
    Kubernetes StatefulSet is the pod's name, the name its PTR record gives it (cluster.view.dns_members)."""
    return nodeid.host_label(socket.gethostname())


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
        r.unknown(t, p, KEYS["admin.tokens"])
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
        text = _read_file(r, f"{p}token_file", t["token_file"], base)
        if text is None:
            return ""
        secret = text.strip()
    else:
        secret = str(t["token"])
    if len(secret) < 16:
        r.problem(f"{p}token", "must be at least 16 characters")
    return secret


def _tls(r: _Reader, t: dict[str, Any], p: str, base: Path) -> TLSFiles | None:
    raw = t.get("tls")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        r.problem(f"{p}tls", "expected a table with cert and key")
        return None
    r.unknown(raw, f"{p}tls.", KEYS["tls"])
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


def _signing_secrets(r: _Reader, t: dict[str, Any], p: str, base: Path) -> tuple[str, ...]:
    """`secrets`, or `secret_file`: one secret a line (blank lines and '#' comments skipped), the first signs."""
    if ("secrets" in t) == ("secret_file" in t):
        r.problem(f"{p}secrets", "give exactly one of secrets and secret_file")
        return ()
    if "secrets" in t:
        secrets: tuple[str, ...] = r.get(t, p, "secrets", _str_list(_text), ())
        key = f"{p}secrets"
    else:
        key = f"{p}secret_file"
        text = _read_file(r, key, t["secret_file"], base)
        if text is None:
            return ()
        secrets = tuple(s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#"))
    if not secrets:
        r.problem(key, "must give at least one secret")
    if any(len(s) < 16 for s in secrets):
        r.problem(key, "every secret must be at least 16 characters")
    return secrets


def _read_file(r: _Reader, key: str, value: Any, base: Path) -> str | None:
    """The text of the secret file `value` names (relative to the config's directory); None once the problem is
    reported under `key`."""
    path = Path(str(value))
    path = path if path.is_absolute() else base / path
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path, a file that is not UTF-8
        reason = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
        r.problem(key, f"cannot read {str(path)!r}: {reason}")
        return None


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a list of strings")
    return v


def _param(v: Any) -> str:
    if not isinstance(v, str) or not v or not set(v) <= PARAM_CHARS:
        raise ValueError("expected a query parameter name of letters, digits, '-', '.', '_' or '~'")
    return v


def _signing(r: _Reader, site: dict[str, Any], prefix: str, base: Path) -> Signing | None:
    if "signing" not in site:
        return None
    t = site["signing"]
    p = f"{prefix}signing."
    if not isinstance(t, dict):
        r.problem(f"{prefix}signing", "expected a table")
        return None
    r.unknown(t, p, KEYS["sites.signing"])
    signing = Signing(
        secrets=_signing_secrets(r, t, p, base),
        expires_param=r.get(t, p, "expires_param", _param, "expires"),
        signature_param=r.get(t, p, "signature_param", _param, "signature"),
        prefix_param=r.get(t, p, "prefix_param", _param, "prefix"),
        client=r.get(t, p, "client", _bool, False),
    )
    if len(set(signing.params)) != len(signing.params):
        r.problem(f"{p}expires_param", "the expiry, signature and prefix parameters must have different names")
    return signing


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
        r.unknown(t, p, KEYS["sites"])
        for req in ("name", "hosts", "origins"):
            if req not in t:
                r.problem(f"{p}{req}", "is required")
        site = Site(
            name=r.get(t, p, "name", _name, f"site{i}"),
            hosts=r.get(t, p, "hosts", _str_list(check_host_pattern), ()),
            origins=r.get(t, p, "origins", _str_list(check_origin_url), ()),
            key_query=r.get(t, p, "key_query", _str_list(_key_param), ("*",)),
            origin_host=r.get(t, p, "origin_host", _origin_host, None),
            forward_fields=r.get(t, p, "forward_fields", _str_list(check_forward_field), ()),
            policy=_policy(r, t, p),
            allow=r.get(t, p, "allow", _networks, ()),
            tls=_tls(r, t, p, base),
            signing=_signing(r, t, p, base),
        )
        for name in site.signing.params if site.signing else ():
            if name in site.key_query:
                r.problem(f"{p}key_query", f"{name!r} carries a signed URL's token: it is never keyed")
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


MAX_DRAIN = 3600.0
MAX_WATCH = 3600.0


def _watch_config(v: Any) -> float:
    """`server.watch_config`: seconds between two looks at the config file (configwatch); 0: never looked at."""
    seconds = _seconds(v)
    if seconds != 0 and not 1 <= seconds <= MAX_WATCH:
        raise ValueError(f"expected 0 (off) or seconds between 1 and {MAX_WATCH:.0f}")
    return seconds


def _drain(v: Any) -> float:
    """`server.drain`, bounded so that a typo (36000 for 3600) cannot keep a stopping node up for half a day.
    Whatever waits on the stop (systemd's TimeoutStopSec, Kubernetes' terminationGracePeriodSeconds) must wait
    longer than drain + supervisor.KILL_AFTER, or it kills the workers first."""
    seconds = _seconds(v)
    if seconds > MAX_DRAIN:
        raise ValueError(f"expected seconds between 0 and {MAX_DRAIN:.0f}")
    return seconds


def _listen_list(v: Any) -> tuple[Listen, ...]:
    return tuple(parse_listen(x) for x in _str_list(str)(v))


def _check_proxy_listeners(r: _Reader, cfg: Config) -> None:
    """server.proxy_protocol names plain listeners: on an HTTPS one the header would come before the TLS
    handshake, which the TLS layer would take for a broken ClientHello."""
    for addr in cfg.proxy_protocol:
        if addr in cfg.tls_listen:
            r.problem("server.proxy_protocol", f"{addr} is an HTTPS listener: PROXY protocol is only for plain ones")
        elif addr not in cfg.listen:
            r.problem("server.proxy_protocol", f"{addr} is not one of server.listen")
    if cfg.proxy_protocol_from and not cfg.proxy_protocol:
        r.problem("server.proxy_protocol_from", "no listener expects a PROXY header (server.proxy_protocol)")


def build(doc: dict[str, Any], source: str, base: Path) -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    r = _Reader(source)
    r.unknown(doc, "", KEYS[""])
    server = r.table(doc, "server")
    r.unknown(server, "server.", KEYS["server"])
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
    no_nets: tuple[IPv4Network | IPv6Network, ...] = ()
    proxy_protocol: tuple[Listen, ...] = r.get(server, "server.", "proxy_protocol", _listen_list, ())
    proxy_protocol_from = r.get(server, "server.", "proxy_protocol_from", _networks, no_nets)
    trusted_forwarders = r.get(server, "server.", "trusted_forwarders", _networks, no_nets)
    fast_path = r.get(server, "server.", "fast_path", _bool, True)
    header_timeout = r.get(server, "server.", "header_timeout", _positive(float), 10.0)
    idle_timeout = r.get(server, "server.", "idle_timeout", _positive(float), 75.0)
    watchdog = r.get(server, "server.", "watchdog", check_watchdog, 10.0)
    drain = r.get(server, "server.", "drain", _drain, 10.0)
    watch_config = r.get(server, "server.", "watch_config", _watch_config, 0.0)
    disk_send = r.get(server, "server.", "disk_send", _choice("pread", "sendfile"), "pread")
    tls_listen: tuple[Listen, ...] = r.get(
        server, "server.", "tls_listen", lambda v: tuple(parse_listen(x) for x in _str_list(str)(v)), ()
    )
    default_tls = _tls(r, server, "server.", base)
    demo = r.table(doc, "demo")
    r.unknown(demo, "demo.", KEYS["demo"])
    demo_origin = r.get(demo, "demo.", "origin", parse_listen, None)
    admin = r.table(doc, "admin")
    r.unknown(admin, "admin.", KEYS["admin"])
    logs = r.table(doc, "log")
    r.unknown(logs, "log.", KEYS["log"])
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
        proxy_protocol=proxy_protocol,
        proxy_protocol_from=proxy_protocol_from,
        trusted_forwarders=trusted_forwarders,
        fast_path=fast_path,
        header_timeout=header_timeout,
        idle_timeout=idle_timeout,
        watchdog=watchdog,
        drain=drain,
        watch_config=watch_config,
        disk_send=disk_send,
        tls_listen=tls_listen,
        tls=default_tls,
        demo_origin=demo_origin,
        admin=r.get(admin, "admin.", "listen", parse_listen, None),
        access_log=access if access is None or access.is_absolute() else base / access,
        cluster=_cluster(r, doc, base) if "cluster" in doc else None,
        tokens=_tokens(r, admin, base),
        job_retention=r.get(admin, "admin.", "job_retention", _seconds, 86400.0),
        max_jobs=r.get(admin, "admin.", "max_jobs", _positive(int), 1000),
        prefetch_slots=r.get(admin, "admin.", "prefetch_slots", _positive(int), 16),
    )
    _check_proxy_listeners(r, cfg)
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
    origin: str,
    listen: str,
    cache_dir: str,
    admin: str | None = None,
    access_log: str | None = None,
    forward_fields: tuple[str, ...] = (),
    **cache: int,
) -> Config:
    """The `serve --origin` mode: every Host goes to one origin (like `varnishd -b`)."""
    r = _Reader("command line")
    origin_url = r.get({"origin": origin}, "--", "origin", check_origin_url, "")
    no_fields: tuple[str, ...] = ()
    fields = r.get(
        {"forward-field": list(forward_fields)}, "--", "forward-field", _str_list(check_forward_field), no_fields
    )
    addr = r.get({"listen": listen}, "--", "listen", parse_listen, Listen("127.0.0.1", 8080))
    admin_addr = r.get({"admin": admin} if admin else {}, "--", "admin", parse_listen, None)
    if r.problems:
        raise ConfigError(r.problems)
    settings = CacheSettings(dir=Path(cache_dir), **cache)  # type: ignore[arg-type]
    site = Site(name="origin", hosts=("*",), origins=(origin_url,), forward_fields=fields)
    return Config(
        source="command line",
        listen=(addr,),
        cache=settings,
        origin=OriginSettings(),
        sites=(site,),
        admin=admin_addr,
        access_log=Path(access_log) if access_log else None,
    )
