"""Seeded, structure-aware random text for loadtest/fuzz.py: valid-looking values, then mutated.

Fast on purpose (plain `random.Random`, no shrinking or database as hypothesis has): the fuzzer needs about a
million inputs in a minute or two. Each generator builds something close to what a parser expects, so inputs
reach deep into it, and `mutate` then breaks it in the ways real traffic and real attackers do.
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

# Characters that have broken parsers before: separators, controls, line ends, Latin-1 and Unicode digits and
# spaces, letters that match ASCII ones under re.IGNORECASE (long s, Kelvin sign, dotless and dotted i), lone
# surrogates (what surrogateescape gives for undecodable bytes, and worse), and a non-BMP character.
WEIRD = (
    *"\x00\t\n\r \"\\,;=-%/.?#&*[]:$<>'()@{}+!~_`|^",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x7f",
    "\x80",
    "\x85",
    "\xa0",
    "\xff",
    "\u0130",
    "\u0131",
    "\u017f",
    "\u212a",
    "\u0661",
    "\u06f5",
    "\u0e53",
    "\uff10",
    "\u2028",
    "\u3000",
    "\ufeff",
    "\ud800",
    "\udc80",
    "\udcff",
    "\udfff",
    "\U0001f600",
    "\u00e9",
    "%00",
    "%",
    "%2e",
    "%2E",
    "%25",
    "%2f",
    "\r\n",
)
NUMBERS = (
    "0",
    "00",
    "1",
    "7",
    "10",
    "59",
    "60",
    "61",
    "99",
    "100",
    "255",
    "1023",
    "1024",
    "4096",
    "65535",
    "65536",
    "99999",
    "1048575",
    "1048576",
    str(2**31 - 1),
    str(2**31),
    str(2**32),
    str(2**53 + 1),
    str(2**63 - 1),
    str(2**63),
    str(2**64),
    "9" * 18,
    "1" + "0" * 18,
    "9" * 19,
    "0" * 30 + "5",
    "-1",
    "-0",
    "+1",
    "1.5",
    "1e3",
    "1e999",
    " 1",
    "1 ",
    "0x10",
    "1_000",
    "inf",
    "nan",
    "\u0661\u0662",
    "\uff11",
    "\u0e53\u0e53",
    "9" * 320,
    "9" * 4400,
)
TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$&'*+^`|~"
PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Letters and their look-alikes that Python's re.IGNORECASE (Unicode) treats as equal.
CONFUSABLE = {"s": "\u017f", "S": "\u017f", "k": "\u212a", "K": "\u212a", "i": "\u0131", "I": "\u0130"}
MAX_LEN = 20_000


class G:
    """A seeded source of random choices and text."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.rand = self.r.random
        self.randrange = self.r.randrange

    def chance(self, p: float) -> bool:
        return self.rand() < p

    def pick(self, seq: Sequence[T]) -> T:
        return seq[int(self.rand() * len(seq))]

    def some(self, make: Callable[[], T], most: int) -> list[T]:
        return [make() for _ in range(self.randrange(most + 1))]

    def int_(self) -> int:
        """Mostly small, sometimes at a boundary, sometimes negative or very large."""
        x = self.rand()
        if x < 0.6:
            return self.randrange(0, 2000)
        if x < 0.8:
            return self.pick((0, 1, 2, 10, 1023, 1024, 2**20, 2**31, 2**32, 2**53, 2**63, 2**64))
        if x < 0.9:
            return -self.randrange(0, 100)
        return self.randrange(0, 2**70)

    def number(self) -> str:
        """Digits as they appear in fields: mostly plain, sometimes an edge case."""
        if self.chance(0.65):
            return str(self.randrange(0, 5000) if self.chance(0.8) else self.randrange(0, 2**40))
        return self.pick(NUMBERS)

    def token(self, most: int = 12) -> str:
        return "".join(self.pick(TOKEN_CHARS) for _ in range(1 + self.randrange(most)))

    def junk(self, most: int = 12) -> str:
        out = []
        for _ in range(self.randrange(most + 1)):
            x = self.rand()
            out.append(
                self.pick(WEIRD) if x < 0.3 else self.pick(PRINTABLE) if x < 0.9 else chr(self.randrange(0x110000))
            )
        return "".join(out)

    def ows(self) -> str:
        return self.pick(("", "", "", " ", "  ", "\t", " \t"))

    def quoted(self, inner: str) -> str:
        return '"' + inner + '"'

    def confuse(self, s: str) -> str:
        """Swap one letter for a Unicode look-alike that regular expressions may match case-insensitively."""
        spots = [i for i, c in enumerate(s) if c in CONFUSABLE]
        if not spots:
            return s
        i = self.pick(spots)
        return s[:i] + CONFUSABLE[s[i]] + s[i + 1 :]

    def mutate(self, s: str, pool: Sequence[str] = ()) -> str:
        """One to four random edits: insert, delete, duplicate, replace, case flip, splice, truncate."""
        for _ in range(1 + self.randrange(4)):
            n = len(s)
            i = self.randrange(n + 1)
            op = self.randrange(10)
            if op == 0:
                s = s[:i] + self.pick(WEIRD) + s[i:]
            elif op == 1:
                s = s[:i] + self.pick(PRINTABLE) + s[i:]
            elif op == 2 and n:
                s = s[:i] + s[i + 1 + self.randrange(min(8, n)) :]
            elif op == 3 and n:
                j = min(n, i + 1 + self.randrange(16))
                times = self.pick((2, 2, 3, 10, 100)) if self.chance(0.95) else 3000
                s = s[:i] + s[i:j] * times + s[j:]
            elif op == 4 and n:
                i = min(i, n - 1)
                s = s[:i] + self.pick(WEIRD) + s[i + 1 :]
            elif op == 5 and n:
                i = min(i, n - 1)
                s = s[:i] + s[i].swapcase() + s[i + 1 :]
            elif op == 6 and pool:
                other = self.pick(pool)
                s = s[:i] + other[self.randrange(len(other) + 1) :]
            elif op == 7:
                s = s[:i]
            elif op == 8:
                s = self.confuse(s)
            else:
                s = s[:i] + self.number() + s[i:]
        return s[:MAX_LEN]

    def maybe(self, s: str, p: float = 0.3, pool: Sequence[str] = ()) -> str:
        return self.mutate(s, pool) if self.chance(p) else s

    # --- HTTP pieces shared by several targets ------------------------------------------------------------

    def timestamp(self) -> float:
        x = self.rand()
        if x < 0.8:
            return float(self.randrange(0, 4_102_444_800))  # 1970..2100
        return float(self.pick((0, -1, 253402300799, 1e12, 2**31, 2**32)))

    def http_date(self) -> str:
        """An HTTP-date in one of the three forms, usually valid, sometimes with fields out of range."""
        t = self.timestamp()
        form = self.randrange(4)
        if form == 0 and 0 <= t < 253402300800:
            return email.utils.formatdate(t, usegmt=True)
        day, month = f"{self.randrange(0, 40):02d}", self.pick(MONTHS)
        hh, mm, ss = (f"{self.randrange(0, 100 if self.chance(0.1) else 24):02d}" for _ in range(3))
        if self.chance(0.3):
            month = self.pick((month.upper(), month.lower(), self.confuse(month)))
        year = f"{self.randrange(0, 10000):04d}" if self.chance(0.2) else str(self.randrange(1900, 2100))
        if form in (0, 1):
            return f"{self.pick(DAYS)}, {day} {month} {year} {hh}:{mm}:{ss} GMT"
        if form == 2:
            return f"{self.pick(LONG_DAYS)}, {day}-{month}-{year[-2:]} {hh}:{mm}:{ss} GMT"
        return f"{self.pick(DAYS)} {month} {day.lstrip('0').rjust(2)} {hh}:{mm}:{ss} {year}"

    def date_or_junk(self) -> str:
        x = self.rand()
        if x < 0.7:
            return self.maybe(self.http_date(), 0.3)
        return self.pick(("0", "-1", "", "now", "Thu, 01 Jan 1970 00:00:00 GMT")) if x < 0.85 else self.junk()

    def etag(self) -> str:
        x = self.rand()
        tag = self.token(8)
        if x < 0.5:
            return f'"{tag}"'
        if x < 0.7:
            return f'W/"{tag}"'
        if x < 0.8:
            return tag
        return self.maybe(self.pick(('"', 'W/"', "W/", '""', "*", '"a,b"', ' "x" ', '"\\"')), 0.5)

    def etag_list(self) -> str:
        return self.pick((",", ", ", " ,")).join(self.etag() for _ in range(1 + self.randrange(3)))

    def headers(self, names: Sequence[str], values: Callable[[str], str], most: int = 5) -> tuple[tuple[str, str], ...]:
        out = []
        for _ in range(self.randrange(most + 1)):
            name = self.pick(names)
            if self.chance(0.2):
                name = self.pick((name.upper(), name.lower(), name.title(), self.junk(6)))
            out.append((name, values(name.lower())))
        return tuple(out)
