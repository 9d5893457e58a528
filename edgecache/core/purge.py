"""Purges without scanning keys: generations for sites and directory prefixes, times for soft purges.

A hard purge of a site or a directory gives it a new generation; every cache key under it includes the
generations of its site and of each ancestor directory, so everything stored before is out of reach at once,
whatever its variants and slices. Lookup cost is one dict probe per path segment, and only for the sites and
directories ever purged. A soft purge records a time: entries stored before it count as stale and revalidate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Mark:
    generation: str = ""
    soft_before: float = 0.0  # entries stored before this are stale


@dataclass(frozen=True, slots=True)
class PurgeTable:
    # (site, host, directory) -> Mark; host "" and directory "" mean the whole site
    marks: dict[tuple[str, str, str], Mark] = field(default_factory=dict)

    def _scopes(self, site: str, host: str, path: str) -> list[tuple[str, str, str]]:
        scopes = [(site, "", "")]
        end = 0
        while (end := path.find("/", end) + 1) > 0:
            scopes.append((site, host, path[:end]))
        return scopes

    def lookup(self, site: str, host: str, path: str) -> tuple[str, float]:
        """(generation suffix for the key, soft-purge time) for an object."""
        if not self.marks:
            return "", 0.0
        gens: list[str] = []
        soft = 0.0
        for scope in self._scopes(site, host, path):
            mark = self.marks.get(scope)
            if mark is not None:
                if mark.generation:
                    gens.append(mark.generation)
                soft = max(soft, mark.soft_before)
        return ".".join(gens), soft

    def with_mark(self, scope: tuple[str, str, str], generation: str | None, soft_before: float | None) -> PurgeTable:
        old = self.marks.get(scope, Mark())
        new = Mark(
            generation if generation is not None else old.generation,
            soft_before if soft_before is not None else old.soft_before,
        )
        return PurgeTable({**self.marks, scope: new})

    def to_bytes(self) -> bytes:
        return json.dumps([[*k, m.generation, m.soft_before] for k, m in self.marks.items()]).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> PurgeTable:
        try:
            rows = json.loads(data)
            return cls({(str(r[0]), str(r[1]), str(r[2])): Mark(str(r[3]), float(r[4])) for r in rows})
        except (ValueError, TypeError, IndexError):
            return cls()
