"""Checking and converting one configuration value: sizes, addresses, URLs, host patterns, subnets, numbers.

Each converter raises ValueError with what is wrong; _Reader turns that into a `file: key: problem` line and goes
on, so every problem of a file is reported at once.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any, TypeVar
from urllib.parse import urlsplit

from edgecache.config.model import Listen
from edgecache.core import forward, nodeid

log = logging.getLogger("edgecache.config")

T = TypeVar("T")

# Matched whole and ASCII only: `$` lets a trailing newline through, and \d takes other scripts' digits.
_SIZE = re.compile(r"[ \t]*([0-9]+(?:\.[0-9]+)?)[ \t]*([kmgt]?)(i?b?)[ \t]*", re.IGNORECASE | re.ASCII)
_TARGET_OK = re.compile(r"[!-~]+")  # visible ASCII, matched whole
_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
# A label of a listen host's name: RFC 1123's (63 characters at most), and underscores, which Docker's service
# names may have.
_LISTEN_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


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
    written, _, port_s = value.rpartition(":")
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"{value!r}: port must be 1-65535")
    host = written[1:-1] if written.startswith("[") and written.endswith("]") else written
    if host == written and ":" in host:
        raise ValueError(f"{value!r}: an IPv6 address is written in brackets, as [::1]:8080")
    if host != written and not _ipv6(host):
        raise ValueError(f"{value!r}: only an IPv6 address is written in brackets")
    host = host or "0.0.0.0"
    if not _listen_host(host):
        raise ValueError(f"{value!r}: {host!r} is not an IP address or a host name")
    return Listen(host, int(port_s))


def _ipv6(host: str) -> bool:
    try:
        return isinstance(ip_address(host), IPv6Address)
    except ValueError:
        return False


def _listen_host(host: str) -> bool:
    """An IP address, or a name that could be one in DNS, not looked up here: check-config runs offline too. A
    name whose last label is a number (300.0.0.1, 127.1) is neither (RFC 1123 section 2.1)."""
    try:
        ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.lower().split(".")  # ASCII only: "\u212a".lower() is "k"
    return (
        host.isascii()
        and len(host) <= 253
        and all(_LISTEN_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


def check_origin_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected an origin URL such as http://10.0.0.1:8080")
    if not _TARGET_OK.fullmatch(value):
        raise ValueError(f"{value!r}: an origin URL has no spaces, controls or non-ASCII characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL with a host")
    if "@" in parts.netloc:  # sent as Basic credentials, and written in every log line about the origin
        raise ValueError(f"{value!r}: an origin URL has no user or password (they would be written in the logs)")
    if not _listen_host(parts.hostname):  # an IP address or a name DNS could have (Docker's underscores too)
        raise ValueError(f"{value!r}: {parts.hostname!r} is not a host name or an IP address")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: an origin URL has no query or fragment")
    try:
        port = parts.port  # read only when asked for: urlsplit itself lets "host:99999" and "host:abc" through
    except ValueError:
        port = 0
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{value!r}: port must be 1-65535")
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

    def warn(self, key: str, message: str) -> None:
        """Something that works but that the operator should know of (check-config prints it): logged."""
        log.warning("%s: %s: %s", self.source, key, message)

    def get(self, table: dict[str, Any], prefix: str, name: str, convert: Callable[[Any], T], default: T) -> T:
        if name not in table:
            return default
        try:
            return convert(table[name])
        except (ValueError, TypeError, OverflowError) as exc:
            # One line, even when the message quotes a value with a newline in it.
            self.problem(f"{prefix}{name}", str(exc).replace("\n", "\\n")[:300])
            return default

    def table(self, parent: dict[str, Any], name: str, prefix: str = "") -> dict[str, Any]:
        value = parent.get(name, {})
        if not isinstance(value, dict):
            self.problem(f"{prefix}{name}", "expected a table")
            return {}
        return value

    def tables(
        self,
        raw: Any,
        key: str,
        known: frozenset[str],
        expected: str,
        *,
        entry: str = "expected a table",
        required: tuple[str, ...] = (),
        nonempty: bool = False,
    ) -> list[tuple[int, str, dict[str, Any]]]:
        """The tables of the array of tables `key` ([[key]]), each with its index and its keys' prefix; what is not
        a table, an unknown key and a missing required one are reported here, and skipped or left to the caller."""
        if not isinstance(raw, list) or (nonempty and not raw):
            self.problem(key, expected)
            return []
        out = []
        for i, t in enumerate(raw):
            p = f"{key}[{i}]."
            if not isinstance(t, dict):
                self.problem(p.rstrip("."), entry)
                continue
            self.unknown(t, p, known)
            for name in required:
                if name not in t:
                    self.problem(f"{p}{name}", "is required")
            out.append((i, p, t))
        return out

    def unknown(self, table: dict[str, Any], prefix: str, known: frozenset[str]) -> None:
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
    # Names such as "node1", or addresses such as "10.0.0.5:8080" when membership comes from DNS, spelled as
    # every node and DNS spell them (core.nodeid.canonical).
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9_.:\[\]-]{1,80}", v):
        raise ValueError("expected a node id of letters, digits, '_', '.', ':' or '-'")
    return nodeid.canonical(v)


def _key_param(v: Any) -> str:
    if not isinstance(v, str) or not v or not v.isprintable() or not v.isascii():
        raise ValueError("expected a query parameter name or '*'")
    return v


def check_forward_field(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a header field name")
    return forward.check_forward_field(v)


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


def _networks(v: Any) -> tuple[IPv4Network | IPv6Network, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError('expected a list of subnets such as ["10.0.0.0/8", "2001:db8::/32"]')
    nets = []
    for x in v:
        try:
            net = ip_network(x, strict=False)
        except ValueError:
            raise ValueError(f"{x!r} is not a subnet") from None
        if isinstance(net, IPv6Network) and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
            # Every client address is matched in its IPv4 form (core.clientaddr, core.proxyproto): this matches none.
            v4 = IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
            raise ValueError(
                f"{x!r} is an IPv4-mapped subnet, which no client address is matched against (an IPv4 client is"
                f" matched as IPv4): write '{v4}'"
            )
        nets.append(net)
    return tuple(nets)


def subnets(r: _Reader, table: dict[str, Any], prefix: str, name: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """The subnet list `name` (_networks), warning of each one written with host bits set ('10.0.0.5/8'): it is read
    as its network, as nginx reads it (and warns of), which may be far more addresses than the one meant."""
    none: tuple[IPv4Network | IPv6Network, ...] = ()
    nets = r.get(table, prefix, name, _networks, none)
    for written, net in zip(table.get(name, ()), nets, strict=False):  # nets is empty when the list was refused
        address, slash, _ = written.partition("/")
        try:
            loose = bool(slash) and ip_address(address) != net.network_address
        except ValueError:  # a form ip_network reads and ip_address does not: nothing to say of it
            loose = False
        if loose:
            r.warn(f"{prefix}{name}", f"{written!r} has host bits set: it is read as {net}, every address in it")
    return nets


def _seconds(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or not math.isfinite(v):
        raise ValueError("expected seconds (a finite number >= 0)")
    return float(v)


def seconds_between(low: float, high: float) -> Callable[[Any], float]:
    """A duration key's check: seconds from `low` to `high`, both included."""

    def check(v: Any) -> float:
        seconds = _seconds(v)
        if not low <= seconds <= high:
            raise ValueError(f"expected seconds between {low:g} and {high:g}")
        return seconds

    return check


def check_watchdog(v: Any) -> float:
    """`server.watchdog`: 0 turns it off; anything shorter than a second would replace workers for a long
    garbage collection or a busy machine, not for a stuck loop."""
    seconds = _seconds(v)
    if 0 < seconds < 1:
        raise ValueError("expected 0 (off) or at least 1 second")
    return seconds


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("expected true or false")
    return v
