"""Which configured site serves a Host: exact names first, then the longest matching wildcard."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Generic, TypeVar

S = TypeVar("S")

_HOSTPORT = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")  # fullmatch, ASCII digits only


def normalise_host(value: str | None) -> str | None:
    """'Video.Example.:8080' -> 'video.example'; None for anything that is not a plausible host[:port]."""
    if not value:
        return None
    value = value.strip(" \t")
    m = _HOSTPORT.fullmatch(value)
    if not m or len(value) > 255:
        return None
    host = m.group(1).lower()
    host = host[:-1] if host.endswith(".") else host  # the one trailing dot of a fully qualified name
    # An empty label ('.cdn.test', 'a..cdn.test', 'video.test..') names no host: a wildcard site took it, and its
    # origin was asked with that Host.
    if not host or host.startswith(".") or host.endswith(".") or ".." in host:
        return None
    return host


class Router(Generic[S]):
    def __init__(self, entries: Iterable[tuple[Iterable[str], S]]) -> None:
        self._exact: dict[str, S] = {}
        self._wild: list[tuple[str, S]] = []
        self._default: S | None = None
        for hosts, site in entries:
            for h in hosts:
                if h == "*":
                    self._default = site
                elif h.startswith("*."):
                    self._wild.append((h[1:], site))  # keep the dot: '*.a.b' matches 'x.a.b', never 'xa.b'
                else:
                    self._exact[h] = site
        self._wild.sort(key=lambda w: -len(w[0]))

    def match(self, host: str) -> S | None:
        site = self._exact.get(host)
        if site is not None:
            return site
        for suffix, wsite in self._wild:
            if host.endswith(suffix):
                return wsite
        return self._default
