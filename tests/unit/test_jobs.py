"""The pure parts of prefetch jobs: windows and their boundaries, the order of jobs, the reading of Cache-Status
(what a URL cost against the cap), and the admin.prefetch_slots key."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from edgecache.admin.jobs import Job, rank
from edgecache.admin.reading import reading
from edgecache.admin.window import in_window, seconds_to_boundary
from edgecache.config import build
from edgecache.errors import ConfigError
from edgecache.prefetchcmd import route

SITE = {"name": "v", "hosts": ["video.test"], "origins": ["http://10.0.0.1:8080"]}


def at(hhmm: str) -> datetime.datetime:
    return datetime.datetime.combine(datetime.date(2026, 3, 1), datetime.time.fromisoformat(hhmm))


def test_a_window_holds_its_start_not_its_end_and_may_span_midnight() -> None:
    night, day = ("22:00", "02:00"), ("02:00", "06:00")
    assert [in_window(day, at(t)) for t in ("01:59", "02:00", "05:59", "06:00")] == [False, True, True, False]
    assert [in_window(night, at(t)) for t in ("21:59", "22:00", "00:00", "01:59", "02:00")] == [
        False,
        True,
        True,
        True,
        False,
    ]
    assert in_window(None, at("12:00"))


def test_a_window_stored_with_an_offset_is_read_as_local_time() -> None:
    """Taken before the admin API refused offsets: every comparison with the node's naive clock raised, and with it
    every dispatch of the jobs, so every submission got a 500 and the node's restart failed."""
    stored = ("02:00Z", "06:00+05:00")
    assert [in_window(stored, at(t)) for t in ("01:59", "02:00", "06:00")] == [False, True, False]
    assert seconds_to_boundary(stored, at("01:00")) == 3600.0


def test_the_next_boundary_is_the_next_start_or_end() -> None:
    day = ("02:00", "06:00")
    assert seconds_to_boundary(day, at("01:00")) == 3600.0  # it opens
    assert seconds_to_boundary(day, at("02:00")) == 4 * 3600.0  # open: it closes at 06:00
    assert seconds_to_boundary(day, at("06:00")) == 20 * 3600.0  # closed until 02:00 tomorrow
    assert seconds_to_boundary(("22:00", "02:00"), at("23:30")) == 2.5 * 3600.0


def test_jobs_rank_by_priority_then_age() -> None:
    old_low = Job(id="a", owner="o", urls=[], priority=0, created=1.0)
    new_low = Job(id="b", owner="o", urls=[], priority=0, created=2.0)
    new_high = Job(id="c", owner="o", urls=[], priority=5, created=3.0)
    assert [j.id for j in sorted([new_low, old_low, new_high], key=rank)] == ["c", "a", "b"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("edgecache; hit", ("cached", "cache")),
        ('edgecache; hit; detail="stale"', ("cached", "cache")),
        ("edgecache; fwd=stale; fwd-status=304", ("cached", "cache")),  # revalidated: the stored body
        ("edgecache; fwd=uri-miss; stored", ("fetched", "origin")),
        ("edgecache; fwd=uri-miss", ("not-stored", "origin")),
        ("edgecache; fwd=bypass", ("not-stored", "origin")),
        # Forwarded to the owner: the owner's member says what happened there; the bytes crossed the network.
        ('edgecache; hit, edgecache; fwd=miss; detail="peer"', ("cached", "peer")),
        ('edgecache; fwd=uri-miss; stored, edgecache; fwd=miss; detail="peer"', ("fetched", "peer")),
        # The origin's own members come first and are never read: "hit" from an origin is not a hit here.
        ("edgecache; hit, edgecache; fwd=uri-miss; stored", ("fetched", "origin")),
        ('edgecache; hit, edgecache; fwd=uri-miss; stored, edgecache; fwd=miss; detail="peer"', ("fetched", "peer")),
        ('othercdn; hit, edgecache; fwd=miss; detail="peer"', ("not-stored", "peer")),
        # Not an answer of ours at all: it costs its bytes and is not counted as cached.
        ("", ("not-stored", "origin")),
        ("edgecache; hit, othercdn; hit", ("not-stored", "origin")),
    ],
)
def test_reading_cache_status_from_this_nodes_end(header: str, expected: tuple[str, str]) -> None:
    assert reading(header) == expected


def test_prefetch_without_an_action_word_is_submit() -> None:
    assert route(["prefetch", "urls.txt", "--site", "v"]) == ["prefetch", "submit", "urls.txt", "--site", "v"]
    assert route(["prefetch", "--site", "v", "urls.txt"]) == ["prefetch", "submit", "--site", "v", "urls.txt"]
    for argv in (["prefetch", "list"], ["prefetch", "show", "x"], ["prefetch", "cancel", "x"], ["prefetch", "-h"]):
        assert route(argv) == argv
    assert route(["purge", "urls.txt"]) == ["purge", "urls.txt"]


def test_prefetch_slots_has_a_default_and_takes_a_value() -> None:
    assert build({"sites": [SITE]}, "f.toml", Path("/x")).prefetch_slots == 16
    assert build({"sites": [SITE], "admin": {"prefetch_slots": 2}}, "f.toml", Path("/x")).prefetch_slots == 2


@pytest.mark.parametrize("bad", [0, -1, "many", 1.5])
def test_a_bad_prefetch_slots_is_a_config_error_naming_the_key(bad: object) -> None:
    with pytest.raises(ConfigError) as exc:
        build({"sites": [SITE], "admin": {"prefetch_slots": bad}}, "f.toml", Path("/x"))
    assert [p.split(":")[1].strip() for p in exc.value.problems] == ["admin.prefetch_slots"]
