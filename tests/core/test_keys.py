"""Keys read back into what they were made of (core.keys): the inverse of make_key and entry_key in one place."""

from __future__ import annotations

from edgecache.core.keys import (
    PrimaryRecord,
    entry_key,
    entry_parts,
    keyed_fields,
    make_key,
    primary_parts,
    varied,
    without_params,
)


def test_entry_parts_and_primary_parts_give_back_what_the_keys_were_made_of() -> None:
    key = make_key("videos", "video.test", "/a/b.mp4?x=1&y=2", ("x",))
    assert primary_parts(key.primary) == ("videos", "video.test", "/a/b.mp4")
    for scope, generation, vary in (("", "", ()), ("s1", "", ()), ("", "g2", ("accept",)), ("s1", "g2", ("accept",))):
        record = PrimaryRecord(generation, vary)
        made = entry_key(key.primary, record, (("Accept", "text/plain"),), scope)
        assert entry_parts(made) == (key.primary, scope, generation)


def test_keyed_fields_give_back_the_fields_an_entry_key_was_made_with() -> None:
    """What a fill sends (Engine._fill): the variant in the key, whichever scope and generation precede it; a field
    the request had not is named with no value (never sent), an empty one with an empty value (sent)."""
    key = make_key("videos", "video.test", "/v?a=b=c", ())
    headers = (("Accept-Encoding", "GZIP,  br"), ("X-Empty", ""), ("Accept", "a=b"))
    for scope in ("", "5c0be"):
        for generation in ("", "9e1d"):
            for vary in ((), ("accept-encoding",), ("accept", "accept-encoding", "x-empty", "x-absent")):
                made = entry_key(key.primary, PrimaryRecord(generation, vary), headers, scope)
                assert keyed_fields(made) == varied(vary, headers)
    made = entry_key(key.primary, PrimaryRecord("g", ("accept-encoding", "x-absent")), headers, "s")
    assert keyed_fields(made) == (("accept-encoding", "gzip,br"), ("x-absent", None))


def test_without_params_drops_the_named_parameters_however_encoded_and_keeps_the_rest() -> None:
    names = frozenset({"expires", "signature"})
    assert without_params("/a?itag=1&expires=9&signature=s&x=%00", names) == "/a?itag=1&x=%00"
    assert without_params("/a?%73ignature=s&sign%61ture&a", names) == "/a?a"
    assert without_params("/a?expires=9&signature=s", names) == "/a"
    assert without_params("/a?signature=s#frag", names) == "/a"
    for target in ("/a", "/a?", "/a?%", "/a?%zz=1&&=", "*", ""):
        assert without_params(target, names) == target
    assert without_params("/a?signature=s", frozenset()) == "/a?signature=s"
