"""HTTP-date (RFC 9110 5.6.7), strictly: IMF-fixdate, and the obsolete RFC 850 and asctime forms.

Only letter case is forgiven (names are case-insensitive tokens in practice); structure is not. Everything is
ASCII: Unicode digits and look-alike letters (the long s, U+017F, matches "s" under a Unicode re.IGNORECASE)
are not a date, nor is a value with anything but spaces and tabs around it.

email.utils accepts far more (missing commas, two-digit years, odd spacing); a cache that reads those as
dates would keep responses the origin meant to be expired. Anything else is not a date: None.
"""

from __future__ import annotations

import calendar
import functools
import re

_DAYS = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAYS = r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTHS = {
    m: i for i, m in enumerate(["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1)
}
_MON = r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"(\d{2}):(\d{2}):(\d{2})"
_FLAGS = re.IGNORECASE | re.ASCII
_IMF = re.compile(rf"{_DAYS}, (\d{{2}}) {_MON} (\d{{4}}) {_TIME} GMT", _FLAGS)
_RFC850 = re.compile(rf"{_LONG_DAYS}, (\d{{2}})-{_MON}-(\d{{2}}) {_TIME} GMT", _FLAGS)
_ASCTIME = re.compile(rf"{_DAYS} {_MON} ([ \d]\d) {_TIME} (\d{{4}})", _FLAGS)


def _timestamp(year: int, month: int, day: int, hh: int, mm: int, ss: int) -> float | None:
    if not (1 <= day <= 31 and hh < 24 and mm < 60 and ss < 61):
        return None
    try:
        return float(calendar.timegm((year, month, day, hh, mm, min(ss, 59), 0, 0, 0)))
    except (ValueError, OverflowError):
        return None


@functools.lru_cache(maxsize=8192)  # the same Date/Expires/Last-Modified strings recur on every hit
def parse_http_date(value: str | None) -> float | None:
    """Seconds since the epoch, or None when `value` is not an HTTP-date."""
    if not value:
        return None
    v = value.strip(" \t")
    if m := _IMF.fullmatch(v):
        return _timestamp(int(m[3]), _MONTHS[m[2].title()], int(m[1]), int(m[4]), int(m[5]), int(m[6]))
    if m := _RFC850.fullmatch(v):
        # Two-digit years: a year that looks more than 50 years ahead is in the past century (RFC 9110 5.6.7).
        year = 1900 + int(m[3]) if int(m[3]) >= 70 else 2000 + int(m[3])
        return _timestamp(year, _MONTHS[m[2].title()], int(m[1]), int(m[4]), int(m[5]), int(m[6]))
    if m := _ASCTIME.fullmatch(v):
        return _timestamp(int(m[6]), _MONTHS[m[1].title()], int(m[2].strip()), int(m[3]), int(m[4]), int(m[5]))
    return None


# RFC 9110 8.8.2.2: a cache may take a Last-Modified as strong when it is at least this long before the Date.
STRONG_DATE_GAP = 60


def strong_last_modified(last_modified: str | None, date: str | None) -> float | None:
    """The time a Last-Modified names, when it is a strong validator (at least STRONG_DATE_GAP seconds before
    the response's Date); else None: an origin that dates every answer with its Date tells no version by it."""
    when = parse_http_date(last_modified)
    sent = parse_http_date(date)
    return when if when is not None and sent is not None and when <= sent - STRONG_DATE_GAP else None
