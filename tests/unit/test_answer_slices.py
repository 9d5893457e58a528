"""respond.answer_slices: the slices an answer reads, which the handler checks before it says `hit`; bounded."""

from __future__ import annotations

from edgecache.core.entry import ObjectMeta
from edgecache.proxy.respond import MAX_CHECKED, answer_slices

SLICE = 1000


def meta(length: int) -> ObjectMeta:
    headers = (("ETag", '"v"'), ("Date", "Sat, 01 Nov 2025 00:00:00 GMT"))
    return ObjectMeta(200, headers, length, '"v"', False, 0.0, 0.0, SLICE)


def test_the_slices_each_answer_reads() -> None:
    m = meta(5500)  # six slices, the last one short
    assert answer_slices("GET", (), m, SLICE) == [0, 1, 2, 3, 4, 5]
    assert answer_slices("GET", (("Range", "bytes=1500-2500"),), m, SLICE) == [1, 2]
    assert answer_slices("GET", (("Range", "bytes=-200"),), m, SLICE) == [5]
    assert answer_slices("GET", (("Range", "bytes=0-10,4000-4010,5-20"),), m, SLICE) == [0, 4]


def test_answers_without_a_body_read_none() -> None:
    m = meta(5500)
    assert answer_slices("HEAD", (), m, SLICE) == []
    assert answer_slices("GET", (("Range", "bytes=9000-"),), m, SLICE) == []  # 416
    assert answer_slices("GET", (("If-None-Match", '"v"'),), m, SLICE) == []  # 304
    assert answer_slices("GET", (), meta(0), SLICE) == []


def test_at_most_max_checked_slices_the_first_ones() -> None:
    huge = meta(10 * MAX_CHECKED * SLICE)
    assert answer_slices("GET", (), huge, SLICE) == list(range(MAX_CHECKED))
    parts = f"bytes=0-{3 * MAX_CHECKED * SLICE},{5 * MAX_CHECKED * SLICE}-{6 * MAX_CHECKED * SLICE}"
    assert answer_slices("GET", (("Range", parts),), huge, SLICE) == list(range(MAX_CHECKED))
