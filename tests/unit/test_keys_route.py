from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecache.core.keys import (
    BadTarget,
    keyed_query,
    make_key,
    normalise_target,
    remove_dot_segments,
    variant,
    varied,
)
from edgecache.core.route import Router, normalise_host


@pytest.mark.parametrize(
    ("raw", "path", "query"),
    [
        ("/a/b", "/a/b", ""),
        ("/a/./b/../c", "/a/c", ""),
        ("/../../etc/passwd", "/etc/passwd", ""),
        ("/x/%2e%2e/y", "/y", ""),
        ("/x/%2E%2e/%2e/y", "/y", ""),
        ("/%7euser/%41b", "/~user/Ab", ""),
        ("/a%2fb", "/a%2Fb", ""),  # an encoded slash stays encoded: it is not a path separator
        ("/a?b=1&a=%7e", "/a", "b=1&a=~"),
        ("/a#frag", "/a", ""),
        ("//double//slash", "//double//slash", ""),
        ("/dir/..", "/", ""),
    ],
)
def test_normalise_target(raw: str, path: str, query: str) -> None:
    assert normalise_target(raw) == (path, query)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("/a%00b", "encoded NUL in the request target"),
        ("/a b", "request target has control characters or spaces"),
        ("/a\x01", "request target has control characters or spaces"),
        ("a/b", "request target must be origin-form (start with '/')"),
        ("*", "request target must be origin-form (start with '/')"),
        ("/" + "a" * 9000, "request target too long"),
        ("/a/..%2Fb", "request target has a '..' segment set off by %2F, %5C, a backslash or ';'"),
        ("/a/%2E%2E%2fb", "request target has a '..' segment set off by %2F, %5C, a backslash or ';'"),
        ("/a%5C..%5Cb", "request target has a '..' segment set off by %2F, %5C, a backslash or ';'"),
        ("/a\\..\\b", "request target has a '..' segment set off by %2F, %5C, a backslash or ';'"),
        ("/a/..;/b", "request target has a '..' segment set off by %2F, %5C, a backslash or ';'"),
        ("/a/..;jsessionid=1/b", "request target has a '..' segment set off by %2F, %5C, a backslash or ';'"),
    ],
)
def test_bad_targets(raw: str, reason: str) -> None:
    with pytest.raises(BadTarget, match=reason.replace("(", r"\(").replace(")", r"\)")):
        normalise_target(raw)


def test_key_query_sorts_names_but_keeps_repeats_in_order() -> None:
    a = make_key("s", "h", "/v?itag=22&sig=x&range=1", ("itag", "range"))
    b = make_key("s", "h", "/v?sig=y&range=1&itag=22", ("itag", "range"))
    assert a.primary == b.primary == "s|h|/v?itag=22&range=1"
    assert a.target == b.target == "/v?itag=22&range=1"  # a fill asks for the key's query, nothing else
    assert a.full_target == "/v?itag=22&sig=x&range=1"  # a pass-through keeps every parameter
    assert make_key("s", "h", "/v?b=2&a=1", ("*",)).primary == "s|h|/v?a=1&b=2"
    assert make_key("s", "h", "/v?b=2&a=1", ()).primary == "s|h|/v"
    assert make_key("s", "h", "/v?b=2&a=1", ()).target == "/v"
    # Repeated names keep their order (an origin may read the first or the last), and items stay byte-exact.
    assert keyed_query("itag=2&b=1&itag=1", ("*",)) == "b=1&itag=2&itag=1"
    assert (
        make_key("s", "h", "/v?itag=2&itag=1", ("*",)).primary != make_key("s", "h", "/v?itag=1&itag=2", ("*",)).primary
    )
    assert keyed_query("a=1&&b", ("*",)) == "a=1&b"
    assert make_key("s", "h", "/v?a", ("*",)).primary != make_key("s", "h", "/v?a=", ("*",)).primary


def test_key_host_is_the_normalised_host() -> None:
    key = make_key("s", "Video.Test", "/a", ())
    assert (key.host, key.primary) == ("video.test", "s|video.test|/a")


def test_variant_normalises_whitespace() -> None:
    h = (("Accept-Encoding", "gzip,  BR"), ("X", "1"))
    assert variant(("accept-encoding",), h) == "accept-encoding=gzip,br"
    assert variant(("accept-encoding", "y"), h) == "accept-encoding=gzip,br\ny"  # absent: the name alone
    assert variant(("y",), (("Y", ""),)) == "y="  # present but empty is another request (RFC 9110 12.5.3)
    assert variant(("x",), (("X", " 1 ,2"), ("X", "3"))) == "x=1,2,3"
    assert variant(("accept-language",), (("Accept-Language", "en, de"),)) != variant(
        ("accept-language",), (("Accept-Language", "de, en"),)
    )
    # Fields a fill sets itself cannot select a variant by the client's value: it never reaches the origin.
    assert variant(("range", "host"), (("Range", "bytes=0-1"), ("Host", "x"))) == "range\nhost"
    assert varied(("X",), (("X", "a,  b"),)) == (("x", "a,b"),)


@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=60))
def test_dot_segments_never_escape_root(path: str) -> None:
    out = remove_dot_segments("/" + path)
    assert out.startswith("/")
    assert "/../" not in out + "/"
    assert not out.endswith("/..")


@given(st.text(max_size=80))
def test_normalise_target_raises_only_badtarget(raw: str) -> None:
    with contextlib.suppress(BadTarget):
        normalise_target(raw)


def test_router() -> None:
    r: Router[str] = Router([(["video.test", "*.cdn.test"], "a"), (["*.x.cdn.test"], "b")])
    assert r.match("video.test") == "a"
    assert r.match("a.cdn.test") == "a"
    assert r.match("y.x.cdn.test") == "b"  # the longest wildcard wins
    assert r.match("cdn.test") is None
    assert r.match("evilcdn.test") is None
    assert Router([(["*"], "any")]).match("whatever") == "any"


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        ("Video.Test", "video.test"),
        ("video.test:8080", "video.test"),
        ("video.test.", "video.test"),
        ("video.test..", None),
        (".cdn.test", None),
        ("a..cdn.test", None),
        ("..", None),
        ("[::1]:80", "[::1]"),
        ("", None),
        (None, None),
        ("a b", None),
        ("evil.test/x", None),
        ("user@evil.test", None),
    ],
)
def test_normalise_host(raw: str | None, host: str | None) -> None:
    assert normalise_host(raw) == host
