"""origin.body_timeout and origin.body_connections: defaults, values, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecache.config import build
from edgecache.errors import ConfigError

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
