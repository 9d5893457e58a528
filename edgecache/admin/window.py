"""A prefetch job's time window ("02:00" to "06:00", local time, possibly across midnight): pure."""

from __future__ import annotations

import datetime


def _bounds(window: tuple[str, str]) -> tuple[datetime.time, datetime.time]:
    # A window stored with an offset (taken before prefetch._options refused them) is read as local time: it must
    # not fail every later comparison, and with it every dispatch and the node's start.
    start, end = (datetime.time.fromisoformat(w).replace(tzinfo=None) for w in window)
    return start, end


def in_window(window: tuple[str, str] | None, now: datetime.datetime) -> bool:
    if window is None:
        return True
    start, end = _bounds(window)
    t = now.time()
    return start <= t < end if start <= end else (t >= start or t < end)  # a window may span midnight


def seconds_to_boundary(window: tuple[str, str], now: datetime.datetime) -> float:
    """Seconds from `now` to the window's next start or end: the next moment in_window can change."""
    ahead = []
    for t in _bounds(window):
        at = datetime.datetime.combine(now.date(), t, tzinfo=now.tzinfo)
        if at <= now:
            at += datetime.timedelta(days=1)
        ahead.append((at - now).total_seconds())
    return min(ahead)
