"""Configuration: TOML in, frozen dataclasses out. Every problem names the file, the key and what is wrong.

Validation collects all problems before failing, like `nginx -t`, so an operator fixes a file in one pass. Each
table has its reader in a module of its own (cache, cluster, sites, signing, admin, server); this one puts them
together, in the order their problems are listed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from edgecache.config.admin import read_tokens
from edgecache.config.cache import (
    EXCLUSIVE_WORKERS,
    SLICES,
    SLICES_PROBLEM,
    check_object_sizes,
    check_tiers,
    read_cache,
)
from edgecache.config.cluster import read_cluster
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
from edgecache.config.schema import KEYS
from edgecache.config.server import MAX_DRAIN, MAX_WATCH, check_admin, check_listeners, read_server
from edgecache.config.sites import read_sites
from edgecache.config.values import (
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
from edgecache.core.freshness import Policy
from edgecache.core.ring import Member
from edgecache.core.signing import Signing
from edgecache.errors import ConfigError

# The entry points, and every type a Config holds (from model and core), so that users import them from one place.
__all__ = [
    "EXCLUSIVE_WORKERS",
    "KEYS",
    "MAX_DRAIN",
    "MAX_WATCH",
    "CacheSettings",
    "ClusterSettings",
    "Config",
    "Disk",
    "Listen",
    "Member",
    "OriginSettings",
    "Policy",
    "Signing",
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


def _log_file(value: object, base: Path) -> Path:
    """The access log's path, relative to the config file's directory: a file (the worker would find a directory
    or a number only when it writes, and the log would be lost)."""
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise ValueError("expected the path of a file, such as /var/log/edgecache/access.log")
    path = base / value  # an absolute value stays itself
    try:
        directory = path.is_dir()
    except OSError as exc:  # a name too long, a directory it may not search
        raise ValueError(f"cannot be a file ({exc.strerror}): {value!r}") from None
    if directory:
        raise ValueError(f"{value!r} is a directory: name a file in it")
    return path


def build(doc: dict[str, Any], source: str, base: Path) -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    r = _Reader(source)
    r.unknown(doc, "", KEYS[""])
    server = read_server(r, doc, base)
    demo_origin = r.get(_table(r, doc, "demo"), "demo.", "origin", parse_listen, None)
    admin = _table(r, doc, "admin")
    access = r.get(_table(r, doc, "log"), "log.", "access", lambda v: _log_file(v, base), None)
    cfg = Config(
        source=source,
        cache=read_cache(r, doc, base),
        origin=_origin(r, doc),
        sites=read_sites(r, doc, base),
        demo_origin=demo_origin,
        admin=r.get(admin, "admin.", "listen", parse_listen, None),
        access_log=access,
        cluster=read_cluster(r, doc, base) if "cluster" in doc else None,
        tokens=read_tokens(r, admin, base),
        job_retention=r.get(admin, "admin.", "job_retention", _seconds, 86400.0),
        max_jobs=r.get(admin, "admin.", "max_jobs", _positive(int), 1000),
        prefetch_slots=r.get(admin, "admin.", "prefetch_slots", _positive(int), 16),
        **server,
    )
    check_listeners(r, cfg)
    check_tiers(r, cfg.cache, cfg.workers)
    check_object_sizes(
        r, cfg.cache, [(f"sites[{i}].cache.max_object_size", s.policy.max_object_size) for i, s in enumerate(cfg.sites)]
    )
    _check_token_sites(r, cfg)
    _check_site_shares(r, cfg)
    if r.problems:
        raise ConfigError(r.problems)
    return cfg


def _table(r: _Reader, doc: dict[str, Any], name: str) -> dict[str, Any]:
    t = r.table(doc, name)
    r.unknown(t, f"{name}.", KEYS[name])
    return t


def _origin(r: _Reader, doc: dict[str, Any]) -> OriginSettings:
    t = _table(r, doc, "origin")
    return OriginSettings(
        connect_timeout=r.get(t, "origin.", "connect_timeout", _positive(float), 5.0),
        read_timeout=r.get(t, "origin.", "read_timeout", _positive(float), 30.0),
        max_connections=r.get(t, "origin.", "max_connections", _positive(int), 256),
        body_timeout=r.get(t, "origin.", "body_timeout", _positive(float), 30.0),
        body_connections=r.get(t, "origin.", "body_connections", _positive(int), 64),
    )


def _check_token_sites(r: _Reader, cfg: Config) -> None:
    known_sites = {s.name for s in cfg.sites}
    for i, tok in enumerate(cfg.tokens):
        for name in tok.sites:
            if name not in known_sites:
                r.problem(f"admin.tokens[{i}].sites", f"{name!r} is not a configured site")


def _check_site_shares(r: _Reader, cfg: Config) -> None:
    for i, site in enumerate(cfg.sites):
        own, limit = site.origin_connections, cfg.origin.max_connections
        if own is not None and own > limit:
            r.problem(f"sites[{i}].origin_connections", f"{own} is more than origin.max_connections ({limit})")


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
    if admin_addr is not None:
        check_admin(r, "--admin", admin_addr, [("--listen", (addr,))])
    settings = CacheSettings(dir=Path(cache_dir), **cache)  # type: ignore[arg-type]
    if not SLICES[0] <= settings.slice_bytes <= SLICES[1]:  # the rules of [cache] (config.cache.read_cache)
        r.problem("--slice", SLICES_PROBLEM)
    elif settings.disk_bytes < settings.slice_bytes * 16:
        r.problem("--disk", "must hold at least 16 slices")
    if r.problems:
        raise ConfigError(r.problems)
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
