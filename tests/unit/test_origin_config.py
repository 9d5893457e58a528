"""origin.body_timeout and origin.body_connections: defaults, values, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecache.config import build
from edgecache.errors import ConfigError
from edgecache.proxy.shares import share

SITE = {"name": "v", "hosts": ["video.test"], "origins": ["http://10.0.0.1:8080"]}


def test_request_body_bounds_have_defaults_and_take_values() -> None:
    origin = build({"sites": [SITE]}, "f.toml", Path("/x")).origin
    assert (origin.body_timeout, origin.body_connections, origin.max_connections) == (30.0, 64, 256)
    doc = {"sites": [SITE], "origin": {"body_timeout": 5, "body_connections": 8}}
    origin = build(doc, "f.toml", Path("/x")).origin
    assert (origin.body_timeout, origin.body_connections) == (5.0, 8)


def test_bad_request_body_bounds_are_config_errors_naming_the_key() -> None:
    with pytest.raises(ConfigError) as exc:
        build({"sites": [SITE], "origin": {"body_timeout": 0, "body_connections": 1.5}}, "f.toml", Path("/x"))
    assert [p.split(":")[1].strip() for p in exc.value.problems] == ["origin.body_timeout", "origin.body_connections"]


def test_a_sites_origin_connections_is_its_share_of_each_pool() -> None:
    other = {**SITE, "name": "w", "hosts": ["w.test"]}
    doc = {"sites": [{**SITE, "origin_connections": 100}, other], "origin": {"max_connections": 100}}
    sites = build(doc, "f.toml", Path("/x")).sites
    assert [s.origin_connections for s in sites] == [100, None]
    # Its default: all of a pool on a node of one site, else all but a quarter; never more than the pool.
    assert [share(256, 1, None), share(256, 2, None), share(64, 3, None), share(3, 2, None)] == [256, 192, 48, 3]
    assert [share(256, 2, 10), share(64, 2, 100)] == [10, 64]


def test_bad_origin_connections_are_config_errors_naming_file_key_and_problem() -> None:
    sites = [{**SITE, "origin_connections": 0}, {**SITE, "name": "w", "hosts": ["w.test"], "origin_connections": 300}]
    with pytest.raises(ConfigError) as exc:
        build({"sites": sites}, "f.toml", Path("/x"))
    assert exc.value.problems == [
        "f.toml: sites[0].origin_connections: must be positive and finite",
        "f.toml: sites[1].origin_connections: 300 is more than origin.max_connections (256)",
    ]
