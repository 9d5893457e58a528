"""Node ids: one spelling for an id that is an address, and the stable name of a member that DNS lists.

Every node hashes ids into the ring (core.ring), and a node finds itself in the ring by comparing its own id
with the members' ids; so an id must be spelled the same way by the config, by DNS and by every node. An address
has many spellings (`fd00::1:8080`, `[fd00:0::1]:8080`, `[::ffff:10.0.0.1]:8080`): `canonical` picks one.

In Kubernetes a pod's address changes when it is rescheduled, but its StatefulSet name does not, and the cache
on its volume belongs to that name: `member_name` takes the name from the address's PTR record, which the
cluster DNS publishes for every ready pod of a headless service as `<pod>.<service>.<namespace>.svc.<zone>`.
Pure: nothing here raises on what DNS or a config file says.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address


def _ip(host: str) -> IPv4Address | IPv6Address | None:
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # what a dual-stack socket reports for an IPv4 peer
    return ip


def _split(node_id: str) -> tuple[IPv4Address | IPv6Address, int] | None:
    host, sep, port = node_id.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    ip = _ip(host)
    return None if ip is None else (ip, int(port))


def canonical(node_id: str) -> str:
    """An id of the form HOST:PORT whose HOST is an IP address, spelled one way: IPv6 compressed and in
    brackets, IPv4-mapped IPv6 as IPv4, the port without leading zeros. A bare IPv6 address followed by a port
    (`fd00::1:8080`, what `${POD_IP}:8080` gives) is read as address and port. Any other id is kept as it is."""
    split = _split(node_id)
    if split is None:
        return node_id
    ip, port = split
    return f"[{ip.compressed}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def is_address(node_id: str) -> bool:
    """Whether the id names a node by its address (then DNS members are named by theirs, not by PTR names)."""
    return _split(node_id) is not None


def host_label(hostname: str) -> str:
    """This machine's id when DNS names the members: its host name's first label, as Kubernetes sets a pod's
    host name to the pod's name."""
    return hostname.split(".", 1)[0].lower()


def member_name(ptr: str, service: str) -> str | None:
    """The member name a PTR record gives, if the record names a pod of `service` (the host of cluster.dns,
    short or fully qualified): `edgecache-1.edgecache-peers.default.svc.cluster.local.` -> `edgecache-1`.
    None for a name under another service (an address can be a pod of several) or one that is not a name."""
    labels = ptr.lower().rstrip(".").split(".")
    wanted = service.lower().rstrip(".").split(".")
    if len(labels) < 2 or labels[1 : 1 + len(wanted)] != wanted or not labels[0]:
        return None
    return labels[0]


def named_members(named: Iterable[tuple[str, str | None]]) -> dict[str, str]:
    """Member id -> address from (address, name) pairs. An address without a name is left out (named later,
    it would move its keys twice). A name with several addresses (a dual-stack pod has an IPv4 and an IPv6
    one) is one member, at the first address in sorted order, so every node picks the same."""
    members: dict[str, str] = {}
    for address, name in sorted(named, key=lambda pair: pair[0]):
        if name is not None and name not in members:
            members[name] = address
    return members
