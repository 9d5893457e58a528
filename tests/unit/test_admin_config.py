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
