"""Purges without scanning keys: generations for sites and directory prefixes, times for soft purges.

A hard purge of a site or a directory gives it a new generation; every cache key under it includes the
generations of its site and of each ancestor directory, so everything stored before is out of reach at once,
whatever its variants and slices. Lookup cost is one dict probe per path segment, and only for the sites and
directories ever purged. A soft purge records a time: entries stored before it count as stale and revalidate.

The table stays small because a purge drops the marks it makes useless (purged(), the one place that rule
lives), and it is stored as a log of purges replayed through the same function (from_log()):
- a hard purge of a scope drops every mark strictly under it. Whatever was stored under those marks has the
  scope's old generation in its key, so is out of reach already; what is stored from now on has the new
  generation, which no key had before, so a key without the dropped marks' generations cannot meet an old
  object. It also drops the scope's own soft time: everything stored before now is out of reach.
- a soft purge drops soft times strictly under it that are not later than its own (lookup takes the latest of
  all that cover an object, so they can no longer decide anything); a mark left with neither goes.
A mark is never dropped for its age: the disk tier keeps an object until it is evicted, however stale, and
dropping a generation would give the keys of everything stored before that purge back to lookups. Past
MAX_MARKS scopes, a purge of a new scope is refused (TableFull); one of a broader scope takes their place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

Scope = tuple[str, str, str]  # (site, host, directory); host "" and directory "" mean the whole site
MAX_MARKS = 10_000


class TableFull(ValueError):
    """The purge would leave more than MAX_MARKS scopes in the table; the message is the reason for the 429."""


@dataclass(frozen=True, slots=True)
class Mark:
    generation: str = ""
    soft_before: float = 0.0  # entries stored before this are stale


def covers(outer: Scope, inner: Scope) -> bool:
    """Is every object under `inner` under `outer` too? (A site covers all of it; a directory its own host's
    subdirectories.)"""
    site, host, path = outer
    return inner[0] == site and (not host or (inner[1] == host and inner[2].startswith(path)))


@dataclass(frozen=True, slots=True)
class PurgeTable:
    marks: dict[Scope, Mark] = field(default_factory=dict)

    def _scopes(self, site: str, host: str, path: str) -> list[Scope]:
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

    def purged(
        self, scope: Scope, generation: str | None, soft_at: float | None, limit: int | None = MAX_MARKS
    ) -> PurgeTable:
        """The table after a hard purge (a new `generation`) or a soft one (at `soft_at`) of `scope`, without the
        marks that purge makes useless (see the module's docstring). TableFull past `limit` scopes."""
        marks: dict[Scope, Mark] = {}
        for key, mark in self.marks.items():
            if key == scope or not covers(scope, key):
                marks[key] = mark
            elif generation is None and mark.generation:
                marks[key] = Mark(mark.generation, mark.soft_before if mark.soft_before > (soft_at or 0.0) else 0.0)
            elif generation is None and mark.soft_before > (soft_at or 0.0):
                marks[key] = mark
        old = marks.get(scope, Mark())
        if generation is not None:
            marks[scope] = Mark(generation, 0.0)
        else:
            marks[scope] = Mark(old.generation, max(old.soft_before, soft_at or 0.0))
        if limit is not None and len(marks) > max(limit, len(self.marks)):  # a table over it may still shrink
            raise TableFull(
                f"the purge table holds {len(self.marks)} directories and sites (at most {limit}): purge a "
                "broader prefix or the whole site, which takes the place of those under it"
            )
        return PurgeTable(marks)

    def to_bytes(self) -> bytes:
        """The table as one line (a snapshot): a log starts with it."""
        return json.dumps([[*k, m.generation, m.soft_before] for k, m in self.marks.items()]).encode()

    @staticmethod
    def op(scope: Scope, generation: str | None, soft_at: float | None) -> bytes:
        """One purge as one line of the log."""
        return json.dumps({"purge": list(scope), "generation": generation, "soft": soft_at}).encode() + b"\n"

    @classmethod
    def from_log(cls, data: bytes) -> PurgeTable:
        """A snapshot line, then the purges since, replayed through purged(). A line that does not decode (the
        last one, torn by a crash mid-write) is skipped."""
        lines = data.split(b"\n")
        table = cls.from_bytes(lines[0])
        for line in lines[1:]:
            try:
                row = json.loads(line)
                scope = (str(row["purge"][0]), str(row["purge"][1]), str(row["purge"][2]))
                gen, soft = row["generation"], row["soft"]
                table = table.purged(
                    scope, None if gen is None else str(gen), None if soft is None else float(soft), None
                )
            except (ValueError, TypeError, KeyError, IndexError):
                continue
        return table

    @classmethod
    def from_bytes(cls, data: bytes) -> PurgeTable:
        try:
            rows = json.loads(data)
            return cls({(str(r[0]), str(r[1]), str(r[2])): Mark(str(r[3]), float(r[4])) for r in rows})
        except (ValueError, TypeError, IndexError):
            return cls()
