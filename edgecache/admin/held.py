"""What the URLs of a token's prefetch jobs hold in memory, together, and its bound (admin.jobs).

A kept job holds all its URLs, in memory, until it is forgotten (admin.job_retention after it ends): its list
and, while it expands manifests, a set of them. max_jobs jobs a token of max_urls URLs each was no bound a node
could keep: 1,000 submissions of a 1 MiB list come to 29 million URLs, 3.8 GB at 130 bytes each (tracemalloc: a
URL of 36 characters is 93 bytes in a list, 52 more in a set), and expansions take a job to 100,000 URLs of up to
8,192 characters. So a token's jobs together hold at most `most` bytes of URLs, each URL
counted as its characters and PER_URL more (its str object, its slot in the list and in the set): a job past that
is refused (429), and URLs a manifest names past it are dropped, as past max_urls.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

PER_URL = 112  # bytes of a URL besides its characters: a str is 49 + 1 a character, a list slot 8, a set entry ~50
MAX_HELD = 128 * 2**20  # a token's: 1.1 million URLs of 10 characters, 500,000 of 150


def cost(urls: Iterable[str]) -> int:
    """The bytes `urls` hold, as counted against a token's bound."""
    n = total = 0
    for url in urls:
        n, total = n + 1, total + len(url)
    return total + n * PER_URL


class Held:
    """Bytes of URLs held by each token's kept jobs (by token name), within `most` a token."""

    def __init__(self, most: int = MAX_HELD) -> None:
        self.most = most
        self._by: Counter[str] = Counter()

    def of(self, owner: str) -> int:
        return self._by[owner]

    def take(self, owner: str, n: int) -> bool:
        """Count `n` more bytes for `owner`, if they fit; False (and nothing counted) if they do not."""
        if self._by[owner] + n > self.most:
            return False
        self._by[owner] += n
        return True

    def load(self, owner: str, n: int) -> None:
        """Count `n` bytes of a job that is kept already (resumed after a restart), whether or not they fit."""
        self._by[owner] += n

    def give(self, owner: str, n: int) -> None:
        self._by[owner] -= n
        if self._by[owner] <= 0:
            del self._by[owner]
