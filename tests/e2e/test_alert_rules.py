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


def _annotations(alert: str, fill: dict[str, str]) -> dict[str, str]:
    """The alert's annotations as Prometheus fills them in: `fill` maps each template to its text."""
    rule = next(r for r in _rules() if r.get("alert") == alert)
    out = {}
    for name, text in rule["annotations"].items():
        for old, new in fill.items():
            text = text.replace(old, new)
        out[name] = text
    return out


def _rules() -> list[dict[str, object]]:
    rules: list[dict[str, object]] = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    return rules


def _promtool(tmp_path: Path, series: list[dict[str, str]], expect: list[dict[str, object]]) -> str:
    """promtool's rule test of `series` (a value a minute), each of `expect` an alert_rule_test at 35 minutes;
    its complaints, empty when every expectation held."""
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    test = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": expect}],
    }
    (tmp_path / "test.yml").write_text(json.dumps(test))  # YAML is a superset of JSON
    promtool = require(PROMTOOL)
    r = subprocess.run(
        [promtool, "test", "rules", "test.yml"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    return "" if r.returncode == 0 else r.stdout + r.stderr


def _fires(tmp_path: Path, series: list[dict[str, str]], ratio: str | None) -> str:
    """promtool on HitRatioDrop at 35 minutes: firing at `ratio` (as its summary writes it), or not."""
    fill = {"{{ $labels.instance }}": "n1", "{{ $value | humanizePercentage }}": ratio or ""}
    labels = {"instance": "n1", "severity": "warning"}
    fired = [{"exp_labels": labels, "exp_annotations": _annotations("HitRatioDrop", fill)}] if ratio else []
    return _promtool(tmp_path, series, [{"eval_time": "35m", "alertname": "HitRatioDrop", "exp_alerts": fired}])


def test_hit_ratio_drop_counts_only_requests_the_cache_could_answer(tmp_path: Path) -> None:
    """Every cacheable request a hit, beside twice as many refusals of the node's own (421 for a scanner's Host, 403
    for a missing signed-URL token: `error`) and some POSTs (`pass`): HitRatioDrop fired, "hit ratio is 28.57%",
    and told the operator to look at misses by cause, of which there were none."""
    healthy = [
        _requests("GET", "2xx", "hit", 60),
        _requests("GET", "4xx", "error", 120),
        _requests("POST", "2xx", "pass", 30),
    ]
    assert _fires(tmp_path, healthy, None) == ""


def test_hit_ratio_drop_fires_when_misses_outnumber_hits(tmp_path: Path) -> None:
    cold = [
        _requests("GET", "2xx", "hit", 20),
        _requests("GET", "2xx", "miss", 30),
        _requests("GET", "2xx", "expired", 10),
        _requests("GET", "4xx", "error", 5),
    ]
    assert _fires(tmp_path, cold, "33.33%") == ""


def _gauge(name: str, value: float, **labels: str) -> dict[str, str]:
    fields = ",".join(f'{k}="{v}"' for k, v in {"job": "edgecache", "instance": "n1", **labels}.items())
    return {"series": f"{name}{{{fields}}}", "values": f"{value}+0x40"}


def test_no_alert_fires_on_a_warm_healthy_node(tmp_path: Path) -> None:
    """A warm cache's disk tier holds its budget: what a real node of `disk = "16MiB"` held once its working set
    outgrew it (16,822,272 bytes of 16,777,216, eviction keeping it there). DiskNearlyFull (over 95% of the
    budget for 15 minutes) fired on every warm node, for good."""
    budget = 16_777_216
    series = [
        _gauge("up", 1),
        _requests("GET", "2xx", "hit", 600),
        _requests("GET", "2xx", "miss", 60),
        _gauge("edgecache_disk_tier_bytes", 16_822_272),
        _gauge("edgecache_disk_tier_budget_bytes", budget),
        _gauge("edgecache_disk_up", 1, disk="/var/cache/edgecache"),
        _gauge("edgecache_peer_up", 1, peer="node2"),
        _gauge("edgecache_peer_purge_log_reachable", 1, peer="node2"),
        _gauge("edgecache_worker_restarts_total", 0, reason="died"),
        {"series": _WAITS.format(outcome="granted"), "values": "0+30x40"},  # turns taken, none given up
        {"series": _WAITS.format(outcome="timeout"), "values": "0+0x40"},
        _gauge("edgecache_purge_vector_origins", 3, state="live"),  # the members' own incarnations
        _gauge("edgecache_purge_vector_origins", 40, state="retired"),  # pods that came and went
        _gauge("edgecache_client_connections", 1_200),
        _gauge("edgecache_client_connections_limit", 40_000),
        _gauge("edgecache_requests_in_flight", 30),
        _gauge("edgecache_requests_in_flight_limit", 20_000),
        _dropped("0+100x40"),  # a full table of purged URLs: each URL purged anew, 100 a minute, drops the oldest
    ]
    names = [str(r["alert"]) for r in _rules() if "alert" in r]
    assert len(names) == 16
    assert _promtool(tmp_path, series, [{"eval_time": "35m", "alertname": n, "exp_alerts": []} for n in names]) == ""


_WAITS = 'edgecache_fill_memory_waits_total{{job="edgecache",instance="n1",pool="shared",outcome="{outcome}"}}'


def test_fills_that_found_no_room_in_time_are_alerted(tmp_path: Path) -> None:
    series = [
        {
            "series": _WAITS.format(outcome="timeout"),
            "values": "0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 3 3 3 3 3 3 3 3 3 3 3",
        }
    ]
    fill = {"{{ $labels.instance }}": "n1", "{{ $value | humanize }}": "3", "{{ $labels.pool }}": "shared"}
    labels = {"instance": "n1", "pool": "shared", "severity": "warning"}
    fired = [{"exp_labels": labels, "exp_annotations": _annotations("FillMemoryFull", fill)}]
    expect = [{"eval_time": "35m", "alertname": "FillMemoryFull", "exp_alerts": fired}]
    assert _promtool(tmp_path, series, expect) == ""


def test_a_disk_tier_that_eviction_does_not_keep_within_its_budget_is_alerted(tmp_path: Path) -> None:
    series = [_gauge("edgecache_disk_tier_bytes", 1.25 * 2**30), _gauge("edgecache_disk_tier_budget_bytes", 2**30)]
    fill = {"{{ $labels.instance }}": "n1", "{{ $value | humanizePercentage }}": "125%"}
    labels = {"instance": "n1", "job": "edgecache", "severity": "warning"}
    fired = [{"exp_labels": labels, "exp_annotations": _annotations("DiskOverBudget", fill)}]
    expect = [{"eval_time": "35m", "alertname": "DiskOverBudget", "exp_alerts": fired}]
    assert _promtool(tmp_path, series, expect) == ""


def test_purge_vector_large_fires_past_a_quarter_of_the_bound_for_half_an_hour(tmp_path: Path) -> None:
    """2,049 retired origins (a quarter of the 8,192 peers take, and one) for the whole run: firing at 35 minutes,
    with the state in its labels; 2,048 live ones: not."""
    name = "edgecache_purge_vector_origins"
    series = [_gauge(name, 2048, state="live"), _gauge(name, 2049, state="retired")]
    fill = {"{{ $labels.instance }}": "n1", "{{ $value | humanize }}": "2.049k", "{{ $labels.state }}": "retired"}
    labels = {"instance": "n1", "severity": "warning", "state": "retired"}
    fired = [{"exp_labels": labels, "exp_annotations": _annotations("PurgeVectorLarge", fill)}]
    expect = [{"eval_time": "35m", "alertname": "PurgeVectorLarge", "exp_alerts": fired}]
    assert _promtool(tmp_path, series, expect) == ""
    # Not before its half hour: at 20 minutes nothing fires.
    assert _promtool(tmp_path, series, [{"eval_time": "20m", "alertname": "PurgeVectorLarge", "exp_alerts": []}]) == ""


def test_a_peer_seen_up_whose_purge_log_cannot_be_read_is_alerted(tmp_path: Path) -> None:
    """node2 up and its purge log unread for the whole run: firing at 35 minutes, naming it; node3 down (PeerDown's)
    and node4 read: not."""
    series = [
        _gauge("edgecache_peer_up", 1, peer="node2"),
        _gauge("edgecache_peer_purge_log_reachable", 0, peer="node2"),
        _gauge("edgecache_peer_up", 0, peer="node3"),
        _gauge("edgecache_peer_purge_log_reachable", 0, peer="node3"),
        _gauge("edgecache_peer_up", 1, peer="node4"),
        _gauge("edgecache_peer_purge_log_reachable", 1, peer="node4"),
    ]
    fill = {"{{ $labels.instance }}": "n1", "{{ $labels.peer }}": "node2"}
    labels = {"instance": "n1", "peer": "node2", "severity": "warning"}
    fired = [{"exp_labels": labels, "exp_annotations": _annotations("PeerPurgeLogUnreachable", fill)}]
    expect = [{"eval_time": "35m", "alertname": "PeerPurgeLogUnreachable", "exp_alerts": fired}]
    assert _promtool(tmp_path, series, expect) == ""
    early = [{"eval_time": "5m", "alertname": "PeerPurgeLogUnreachable", "exp_alerts": []}]
    assert _promtool(tmp_path, series, early) == ""  # not before its ten minutes


def test_connections_near_their_limit_for_five_minutes_are_alerted(tmp_path: Path) -> None:
    """37,000 of the 40,000 connections two workers take (92.5%) for the whole run: firing at 35 minutes; 35,999 of
    40,000 requests in flight (under 90%): not; and nothing before the five minutes are up."""
    series = [
        _gauge("edgecache_client_connections", 37_000),
        _gauge("edgecache_client_connections_limit", 40_000),
        _gauge("edgecache_requests_in_flight", 35_999),
        _gauge("edgecache_requests_in_flight_limit", 40_000),
    ]
    fill = {"{{ $labels.instance }}": "n1", "{{ $value | humanizePercentage }}": "92.5%"}
    labels = {"instance": "n1", "job": "edgecache", "severity": "warning"}
    fired = [{"exp_labels": labels, "exp_annotations": _annotations("ConnectionsNearLimit", fill)}]
    expect = [
        {"eval_time": "35m", "alertname": "ConnectionsNearLimit", "exp_alerts": fired},
        {"eval_time": "35m", "alertname": "RequestsNearLimit", "exp_alerts": []},
        {"eval_time": "4m", "alertname": "ConnectionsNearLimit", "exp_alerts": []},
    ]
    assert _promtool(tmp_path, series, expect) == ""


def test_requests_in_flight_near_their_limit_for_five_minutes_are_alerted(tmp_path: Path) -> None:
    series = [_gauge("edgecache_requests_in_flight", 9_500), _gauge("edgecache_requests_in_flight_limit", 10_000)]
    fill = {"{{ $labels.instance }}": "n1", "{{ $value | humanizePercentage }}": "95%"}
    labels = {"instance": "n1", "job": "edgecache", "severity": "warning"}
    fired = [{"exp_labels": labels, "exp_annotations": _annotations("RequestsNearLimit", fill)}]
    expect = [{"eval_time": "35m", "alertname": "RequestsNearLimit", "exp_alerts": fired}]
    assert _promtool(tmp_path, series, expect) == ""


def _dropped(values: str) -> dict[str, str]:
    return {"series": 'edgecache_purged_records_dropped_total{job="edgecache",instance="n1"}', "values": values}


def test_a_storm_of_dropped_purged_records_is_alerted(tmp_path: Path) -> None:
    """500 drops a minute from the 20th (7,500 in 15 minutes: the objects of over a tenth of a disk's buckets miss
    once): firing at 35 minutes with the count; at 436 a minute (6,540 in 15), or before the storm: not."""
    fill = {"{{ $labels.instance }}": "n1", "{{ $value | humanize }}": "7.5k"}
    labels = {"instance": "n1", "severity": "warning"}
    fired = [{"exp_labels": labels, "exp_annotations": _annotations("PurgedRecordsDropping", fill)}]
    storm = [_dropped("0x20 500+500x20")]
    expect = [
        {"eval_time": "35m", "alertname": "PurgedRecordsDropping", "exp_alerts": fired},
        {"eval_time": "19m", "alertname": "PurgedRecordsDropping", "exp_alerts": []},
    ]
    assert _promtool(tmp_path, storm, expect) == ""
    steady = [_dropped("0+436x40")]
    assert (
        _promtool(tmp_path, steady, [{"eval_time": "35m", "alertname": "PurgedRecordsDropping", "exp_alerts": []}])
        == ""
    )
