"""server.server_field: the Server of answers whose origin sent none (proxy.serverfield): "edgecache" by default,
"" for none, else product tokens; control characters and other text refused, naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecache.config import build
from edgecache.errors import ConfigError
from edgecache.lifecycle import RESTART_ONLY

SITE = {"name": "v", "hosts": ["video.test"], "origins": ["http://10.0.0.1:8080"]}
GRAMMAR = (
    "is not product tokens such as edgecache or edgecache/2.1 (letters, digits and !#$%&'*+-.^_`|~; a version after "
    '"/"; one space between two), or "" for no Server field'
)


def field(value: object) -> str:
    return build({"server": {"server_field": value}, "sites": [SITE]}, "f.toml", Path("/e")).server_field


def problems(value: object) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        field(value)
    return exc.value.problems


def test_the_default_names_no_version_and_empty_adds_none() -> None:
    assert build({"sites": [SITE]}, "f.toml", Path("/e")).server_field == "edgecache"
    assert field("") == ""
    for good in ("MyCDN", "MyCDN/2.0", "isp-cdn/1.2.3 edge/4", "a!#$%&'*+-.^_`|~z/v1"):
        assert field(good) == good
    assert "server_field" in RESTART_ONLY  # the fast path remembers heads made with it


def test_text_that_is_not_product_tokens_is_refused() -> None:
    for wrong in ("My CDN ", " x", "a  b", "a/b/c", "a/", "/1", "x (comment)", 'x"y', "a,b", "caf\u00e9", "a:b"):
        assert problems(wrong) == [f"f.toml: server.server_field: {wrong!r} {GRAMMAR}"], wrong
    for control in ("a\r\nX-Evil: 1", "a\x00", "a\tb", "a\x7f"):
        assert problems(control) == [
            "f.toml: server.server_field: has a control character: a field value cannot carry one (RFC 9110 5.5)"
        ]
    assert problems("x" * 129) == ["f.toml: server.server_field: expected at most 128 characters"]
    for not_text in (1, True, ["edgecache"]):
        assert problems(not_text) == [
            'f.toml: server.server_field: expected a string such as "edgecache", or "" for no Server field'
        ]
