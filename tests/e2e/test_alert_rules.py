"""The alert rules of config/prometheus/alerts.yml against series shaped as a node exports them, with promtool's own
rule tests (the real Prometheus rule engine, and the `for:` durations no end-to-end run can wait out)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.e2e.test_prometheus import ALERTS, PROMTOOL, require

_SERIES = 'edgecache_requests_total{{job="edgecache",instance="n1",site="v",method="{method}",status_class="{cls}",\
cache_status="{status}"}}'


def _requests(method: str, cls: str, status: str, per_minute: int) -> dict[str, str]:
    return {"series": _SERIES.format(method=method, cls=cls, status=status), "values": f"0+{per_minute}x40"}


def _annotations(ratio: str) -> dict[str, str]:
    """HitRatioDrop's annotations as Prometheus fills them in for instance n1 at this ratio."""
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    rule = next(r for r in rules if r.get("alert") == "HitRatioDrop")
    fill = {"{{ $labels.instance }}": "n1", "{{ $value | humanizePercentage }}": ratio}
    out = {}
    for name, text in rule["annotations"].items():
        for old, new in fill.items():
            text = text.replace(old, new)
        out[name] = text
    return out


def _fires(tmp_path: Path, series: list[dict[str, str]], ratio: str | None) -> subprocess.CompletedProcess[str]:
    """promtool's verdict on HitRatioDrop at 35 minutes: firing at `ratio` (as its summary writes it), or not."""
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    labels = {"instance": "n1", "severity": "warning"}
    expected = [] if ratio is None else [{"exp_labels": labels, "exp_annotations": _annotations(ratio)}]
    test = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [{"eval_time": "35m", "alertname": "HitRatioDrop", "exp_alerts": expected}],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(json.dumps(test))  # YAML is a superset of JSON
    promtool = require(PROMTOOL)
    return subprocess.run(
        [promtool, "test", "rules", "test.yml"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )


def test_hit_ratio_drop_counts_only_requests_the_cache_could_answer(tmp_path: Path) -> None:
    """Every cacheable request a hit, beside twice as many refusals of the node's own (421 for a scanner's Host, 403
    for a missing signed-URL token: `error`) and some POSTs (`pass`): HitRatioDrop fired, "hit ratio is 28.57%",
    and told the operator to look at misses by cause, of which there were none."""
    healthy = [
        _requests("GET", "2xx", "hit", 60),
        _requests("GET", "4xx", "error", 120),
        _requests("POST", "2xx", "pass", 30),
    ]
    r = _fires(tmp_path, healthy, None)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hit_ratio_drop_fires_when_misses_outnumber_hits(tmp_path: Path) -> None:
    cold = [
        _requests("GET", "2xx", "hit", 20),
        _requests("GET", "2xx", "miss", 30),
        _requests("GET", "2xx", "expired", 10),
        _requests("GET", "4xx", "error", 5),
    ]
    r = _fires(tmp_path, cold, "33.33%")
    assert r.returncode == 0, r.stdout + r.stderr
