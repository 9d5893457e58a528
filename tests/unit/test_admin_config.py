"""admin.job_retention and admin.max_jobs: defaults, values, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecache.config import build
from edgecache.errors import ConfigError

SITE = {"name": "v", "hosts": ["video.test"], "origins": ["http://10.0.0.1:8080"]}


def test_job_bounds_have_defaults_and_take_values() -> None:
    cfg = build({"sites": [SITE]}, "f.toml", Path("/x"))
    assert (cfg.job_retention, cfg.max_jobs) == (86400.0, 1000)
    cfg = build({"sites": [SITE], "admin": {"job_retention": 0, "max_jobs": 5}}, "f.toml", Path("/x"))
    assert (cfg.job_retention, cfg.max_jobs) == (0.0, 5)


def test_bad_job_bounds_are_config_errors_naming_the_key() -> None:
    with pytest.raises(ConfigError) as exc:
        build({"sites": [SITE], "admin": {"job_retention": -1, "max_jobs": 0}}, "f.toml", Path("/x"))
    assert [p.split(":")[1].strip() for p in exc.value.problems] == ["admin.job_retention", "admin.max_jobs"]


def test_two_tokens_with_one_name_are_refused() -> None:
    """Prefetch jobs are owned by a token's name: two providers of different sites under one name used to see and
    cancel each other's jobs."""
    tokens = [
        {"name": "ops", "token": "a" * 20, "role": "operator"},
        {"name": "p", "token": "b" * 20, "sites": ["v"]},
        {"name": "p", "token": "c" * 20, "sites": ["w"]},
    ]
    sites = [SITE, {**SITE, "name": "w", "hosts": ["w.test"]}]
    with pytest.raises(ConfigError) as exc:
        build({"sites": sites, "admin": {"tokens": tokens}}, "f.toml", Path("/x"))
    assert exc.value.problems == [
        "f.toml: admin.tokens[2].name: 'p' is also the name of admin.tokens[1]: give each token its own name"
    ]
    tokens[2]["name"] = "q"
    cfg = build({"sites": sites, "admin": {"tokens": tokens}}, "f.toml", Path("/x"))
    assert [t.name for t in cfg.tokens] == ["ops", "p", "q"]
