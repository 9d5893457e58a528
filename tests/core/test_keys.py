"""Keys read back into what they were made of (core.keys): the inverse of make_key and entry_key in one place."""

from __future__ import annotations

from edgecache.core.keys import PrimaryRecord, entry_key, entry_parts, make_key, primary_parts


def test_entry_parts_and_primary_parts_give_back_what_the_keys_were_made_of() -> None:
    key = make_key("videos", "video.test", "/a/b.mp4?x=1&y=2", ("x",))
    assert primary_parts(key.primary) == ("videos", "video.test", "/a/b.mp4")
    for scope, generation, vary in (("", "", ()), ("s1", "", ()), ("", "g2", ("accept",)), ("s1", "g2", ("accept",))):
        record = PrimaryRecord(generation, vary)
        made = entry_key(key.primary, record, (("Accept", "text/plain"),), scope)
        assert entry_parts(made) == (key.primary, scope, generation)
