"""The [[sites]]: the hosts each site serves, its origins, what is keyed, its cache policy, TLS and signing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecache.config.cache import object_size
from edgecache.config.files import read_tls
from edgecache.config.model import Site
from edgecache.config.schema import KEYS
from edgecache.config.signing import read_signing
from edgecache.config.values import (
    _bool,
    _key_param,
    _name,
    _origin_host,
    _positive,
    _Reader,
    _seconds,
    _str_list,
    check_forward_field,
    check_host_pattern,
    check_origin_url,
    subnets,
)
from edgecache.core.freshness import Policy


def read_sites(r: _Reader, doc: dict[str, Any], base: Path) -> tuple[Site, ...]:
    sites: list[Site] = []
    names: set[str] = set()
    seen_hosts: dict[str, str] = {}
    entries = r.tables(
        doc.get("sites", []),
        "sites",
        KEYS["sites"],
        "expected at least one [[sites]] table",
        required=("name", "hosts", "origins"),
        nonempty=True,
    )
    for i, p, t in entries:
        site = _site(r, t, p, i, base)
        # A site's name scopes its cache keys, purges and tokens: two of one name would share them.
        if site.name in names:
            r.problem(f"{p}name", f"{site.name!r} is also the name of another site: give each site its own name")
        names.add(site.name)
        for h in site.hosts:
            if h in seen_hosts:
                r.problem(f"{p}hosts", f"{h!r} is already served by site {seen_hosts[h]!r}")
            seen_hosts[h] = site.name
        sites.append(site)
    return tuple(sites)


def _site(r: _Reader, t: dict[str, Any], p: str, i: int, base: Path) -> Site:
    hosts: tuple[str, ...] = r.get(t, p, "hosts", _str_list(check_host_pattern), ())
    site = Site(
        name=r.get(t, p, "name", _name, f"site{i}"),
        hosts=hosts,
        origins=r.get(t, p, "origins", _str_list(check_origin_url), ()),
        key_query=r.get(t, p, "key_query", _str_list(_key_param), ("*",)),
        origin_host=r.get(t, p, "origin_host", _origin_host, None),
        forward_fields=r.get(t, p, "forward_fields", _str_list(check_forward_field), ()),
        policy=_policy(r, t, p),
        allow=subnets(r, t, p, "allow"),
        tls=read_tls(r, t, p, base, hosts),
        signing=read_signing(r, t, p, base),
        origin_connections=r.get(t, p, "origin_connections", _positive(int), None),
    )
    for name in site.signing.params if site.signing else ():
        if name in site.key_query:
            r.problem(f"{p}key_query", f"{name!r} carries a signed URL's token: it is never keyed")
    reported = "\n".join(r.problems)
    if "hosts" in t and not site.hosts and f"{p}hosts:" not in reported:
        r.problem(f"{p}hosts", "must name at least one host")
    if "origins" in t and not site.origins and f"{p}origins:" not in reported:
        r.problem(f"{p}origins", "must name at least one origin URL")
    return site


def _policy(r: _Reader, site: dict[str, Any], prefix: str) -> Policy:
    """[sites.cache]: the choices RFC 9111 leaves to a shared cache."""
    t = r.table(site, "cache", prefix)
    p = f"{prefix}cache."
    r.unknown(t, p, KEYS["sites.cache"])
    policy = Policy(
        heuristic_fraction=r.get(t, p, "heuristic_fraction", _seconds, 0.1),
        heuristic_max=r.get(t, p, "heuristic_max", _seconds, 86400.0),
        store_set_cookie=r.get(t, p, "store_set_cookie", _bool, False),
        min_ttl=r.get(t, p, "min_ttl", _seconds, None),
        max_ttl=r.get(t, p, "max_ttl", _seconds, None),
        max_stale_ceiling=r.get(t, p, "max_stale", _seconds, 86400.0),
        max_object_size=r.get(t, p, "max_object_size", object_size, None),
    )
    if policy.heuristic_fraction > 1:
        r.problem(f"{p}heuristic_fraction", "must be between 0 and 1")
    if policy.min_ttl is not None and policy.max_ttl is not None and policy.min_ttl > policy.max_ttl:
        r.problem(f"{p}min_ttl", "must not exceed max_ttl")
    return policy
