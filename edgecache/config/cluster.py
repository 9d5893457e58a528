"""The [cluster] table: this node's id, the members (listed, or found in DNS), health checks and the shared key."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from edgecache.config.files import read_secret_file
from edgecache.config.model import ClusterSettings
from edgecache.config.schema import KEYS
from edgecache.config.values import _node_id, _positive, _Reader, parse_listen
from edgecache.core import nodeid
from edgecache.core.hop import MIN_KEY
from edgecache.core.ring import Member


def read_cluster(r: _Reader, doc: dict[str, Any], base: Path) -> ClusterSettings | None:
    t = r.table(doc, "cluster")
    p = "cluster."
    r.unknown(t, p, KEYS["cluster"])
    entries = r.tables(
        t.get("nodes", []),
        "cluster.nodes",
        KEYS["cluster.nodes"],
        "expected [[cluster.nodes]] tables",
        required=("id", "address"),
    )
    nodes = tuple(_member(r, n, np) for _, np, n in entries)
    _reachable(r, nodes, [np for _, np, _ in entries])
    named = t if "self" in t or "dns" not in t else {"self": _host_id()}
    settings = ClusterSettings(
        self_id=r.get(named, p, "self", _node_id, ""),
        key=_cluster_key(r, t, p, base, alone=len(nodes) <= 1 and "dns" not in t),
        accepted=_accepted_key(r, t, p, base),
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
    addresses = [_same_host(n.address) for n in nodes if n.address]
    if len(set(addresses)) != len(addresses):  # two ids for one node: each would forward to itself as to a peer
        r.problem(f"{p}nodes", "node addresses must be unique")
    if nodes and settings.self_id and settings.self_id not in ids:
        r.problem(f"{p}self", f"{settings.self_id!r} is not one of the nodes")
    return settings


def _member(r: _Reader, t: dict[str, Any], p: str) -> Member:
    address = r.get(t, p, "address", parse_listen, None)
    admin = r.get(t, p, "admin", parse_listen, None)
    return Member(
        id=r.get(t, p, "id", _node_id, "?"),
        address=nodeid.canonical(str(address)) if address else "",  # an IPv6 one in brackets, to put in a URL
        weight=r.get(t, p, "weight", _positive(float), 1.0),
        admin=nodeid.canonical(str(admin)) if admin else None,
    )


_LOOPBACK_NAMES = {"localhost": "127.0.0.1", "ip6-localhost": "[::1]"}


def _same_host(address: str) -> str:
    """`address` with a loopback name written as its address: localhost:P and 127.0.0.1:P are one node."""
    host, _, port = address.rpartition(":")
    return f"{_LOOPBACK_NAMES.get(host.lower(), host)}:{port}"


def _reachable(r: _Reader, nodes: tuple[Member, ...], paths: list[str]) -> None:
    """Each member's address is one its peers can connect to, and no admin address is another's client address."""
    clients = {_same_host(n.address): n.id for n in nodes if n.address}
    for node, p in zip(nodes, paths, strict=True):
        host = node.address.rpartition(":")[0].strip("[]")
        if host in ("0.0.0.0", "::"):
            r.problem(
                f"{p}address",
                f"{node.address} is where a node listens, not where its peers reach it: give "
                "the address the other nodes connect to (peers would connect to themselves)",
            )
        if node.admin is not None and (other := clients.get(_same_host(node.admin))) is not None:
            r.problem(
                f"{p}admin",
                f"{node.admin} is node {other!r}'s client address: purges sent there would be "
                "answered as a viewer's requests",
            )


_MAKE_KEY = "make one with `openssl rand -hex 32` and give every node the same"


def _cluster_key(r: _Reader, t: dict[str, Any], p: str, base: Path, alone: bool) -> bytes:
    """`key`, or `key_file` (a file holding it, such as a mounted Kubernetes Secret). Required unless the cluster
    is this node alone: a node honours a forwarded request's hop field only when it is signed with this key."""
    if "key" not in t and "key_file" not in t and not alone:
        r.problem(f"{p}key", f"a cluster of several nodes needs a shared key to sign forwarded requests: {_MAKE_KEY}")
        return b""
    return _read_key(r, t, p, base, "key")


def _accepted_key(r: _Reader, t: dict[str, Any], p: str, base: Path) -> tuple[bytes, ...]:
    """`accept_key` or `accept_key_file`: a key honoured besides `key`, never signed with. Changing the key takes
    three rolls, so that no two nodes ever refuse each other: every node accepts the new key; every node signs
    with it (`key`) and accepts the old one; the old one is dropped. A node that refused a peer's hop would judge
    the viewer by that peer's address (its site ACL, signed URL and rate limit) and refuse its purges."""
    found = _read_key(r, t, p, base, "accept_key")
    if found and "key" not in t and "key_file" not in t:
        r.problem(f"{p}accept_key", "is honoured besides key, which is not set")
    return (found,) if found else ()


def _read_key(r: _Reader, t: dict[str, Any], p: str, base: Path, name: str) -> bytes:
    """The key `name` gives, or `name`_file; empty when neither is set (or either is wrong: a problem is noted)."""
    if name in t and f"{name}_file" in t:
        r.problem(f"{p}{name}", f"give one of {name} and {name}_file, not both")
        return b""
    if f"{name}_file" in t:
        text = read_secret_file(r, f"{p}{name}_file", t[f"{name}_file"], base)
        if text is None:
            return b""
        key, name = text.strip(), f"{name}_file"
    elif name in t:
        key = t[name] if isinstance(t[name], str) else ""
    else:
        return b""
    if len(key) < MIN_KEY or not key.isascii() or not key.isprintable():
        r.problem(f"{p}{name}", f"must be at least {MIN_KEY} printable ASCII characters: {_MAKE_KEY}")
        return b""
    return key.encode("ascii")


def _host_id() -> str:
    """cluster.self when DNS lists the members and the file does not say: this machine's host name, which in a
    Kubernetes StatefulSet is the pod's name, the name its PTR record gives it (cluster.view.dns_members)."""
    return nodeid.host_label(socket.gethostname())
