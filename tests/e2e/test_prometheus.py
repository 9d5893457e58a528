"""The monitoring that ships in config/: a real Prometheus scrapes a real edge under traffic, and every
expression of the Grafana dashboard and every alert rule's base expression returns data; promtool accepts
the rules and the scrape configs.

The edge is one node of a 2-node cluster, so the peer panels have forwards to show; then its peer is stopped,
slices on its disk are damaged and its worker is killed, and the alerts for those situations (PeerDown,
DiskCorruption, WorkerRestarted, and OriginErrorRate for the dead origin it is given) must fire: their whole
expressions give the expected series.

Needs `prometheus` and `promtool` on PATH (Debian's `prometheus` package): scripts/test installs them where it
can, and says what to do where it cannot; missing, these tests fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.procs import ROOT, free_port
from tests.metricnames import samples
from tests.origin import Origin

PROMETHEUS = Path(shutil.which("prometheus") or "/usr/bin/prometheus")
PROMTOOL = Path(shutil.which("promtool") or "/usr/bin/promtool")
DASHBOARD = ROOT / "config" / "grafana" / "dashboard.json"
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
SCRAPE_CONFIG = ROOT / "config" / "prometheus" / "prometheus.yml"
DEADLINE = 90.0  # seconds for Prometheus to have scraped enough for every expression to return data
# Prometheus's scrape and rule evaluation interval, and how often the test looks for the data they bring: the test
# waits for a few scrapes and evaluations (a rate needs two samples, an alert's rule an evaluation).
SCRAPE = 0.25
ALERT_NAMES = {
    "EdgecacheDown",
    "HitRatioDrop",
    "OriginErrorRate",
    "DiskOverBudget",
    "WorkerRestarted",
    "ForkServerReplaced",
    "AccessLogDropping",
    "PeerDown",
    "DiskCorruption",
    "PurgedRecordsDropping",
    "DiskFailed",
    "FillMemoryFull",
    "PurgeVectorLarge",
    "PeerPurgeLogUnreachable",
    "ConnectionsNearLimit",
    "RequestsNearLimit",
}
OPERATOR = "prometheus-test-operator-token"

# Grafana's variables, as Prometheus gets them once Grafana has expanded them.
_GRAFANA_VARS = {
    "$__rate_interval": "30s",
    "$__interval": "30s",
    "$__range": "30s",
    "${instance}": ".*",
    "$instance": ".*",
}
# `<base expression> <comparison> <number>`, as alerts.yml writes every expr (and Prometheus prints it).
_COMPARISON = re.compile(r"^(?P<base>.*?)\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?[-+]?[0-9.]+(?:e[-+]?[0-9]+)?$", re.S)


def require(binary: Path) -> str:
    if not binary.exists():
        pytest.fail(
            f"{binary} is missing: .ci/run must install Debian's prometheus package "
            "(apt-get update -qq && apt-get install -y -qq prometheus)"
        )
    return str(binary)


def dashboard_exprs() -> list[str]:
    """Every target's expr in the dashboard, rows' nested panels included, Grafana variables expanded."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for target in node.get("targets", []):
                if target.get("expr"):
                    found.append(target["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(DASHBOARD.read_text())["panels"])
    expanded = []
    for expr in found:
        for var, value in _GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"a Grafana variable this test does not expand: {expr}"
        expanded.append(expr)
    return expanded


def base_expression(expr: str) -> str:
    m = _COMPARISON.match(expr.strip())
    assert m, f"alert expr is not `<base> <comparison> <number>`: {expr}"
    return m.group("base")


@contextlib.contextmanager
def _log_tail(path: Path) -> Iterator[None]:
    """On failure, the last lines of a process's log in the assertion message."""
    try:
        yield
    except AssertionError as exc:
        tail = path.read_text(errors="replace").splitlines()[-30:] if path.exists() else []
        raise AssertionError(f"{exc}\n--- {path.name} ---\n" + "\n".join(tail)) from None


async def stop_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the process group, SIGKILL it if it is still there after 10 s."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)


@contextlib.asynccontextmanager
async def process(log: Path, *argv: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A process in its own group, stdout and stderr to `log` (a file: a pipe nobody drains would fill)."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    try:
        yield proc
    finally:
        await stop_group(proc)


def _logged(log: Path, needle: str) -> bool:
    return needle in log.read_text(errors="replace")


async def wait_log(proc: asyncio.subprocess.Process, log: Path, needle: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not _logged(log, needle):
        assert proc.returncode is None, f"exited early with {proc.returncode}"
        assert time.monotonic() < deadline, f"no {needle!r} in the log after {seconds} s"
        await asyncio.sleep(0.05)


async def traffic(port: int, admin: int, origin: Origin, seen: Counter[int]) -> None:
    """Until cancelled: hits, cold misses, ranges, expiries, no-store, a 404, origin 5xx, a dead origin, and
    bursts of concurrent requests for new objects (collapsed onto one fetch); a purge each round and a prefetch
    job each tenth (their answers counted in `seen` too)."""
    big = os.urandom(3 * 2**20)
    origin.put("/v/big.bin", big)
    origin.put("/v/short", b"s" * 5000, headers={"Cache-Control": "public, max-age=1"})
    origin.put("/v/nostore", b"n" * 2000, headers={"Cache-Control": "no-store"})
    origin.put("/v/boom", b"origin broke\n", status=500, headers={"Cache-Control": "no-store"})
    edge = f"http://127.0.0.1:{port}"
    video, down = {"Host": "video.test"}, {"Host": "down.test"}

    async def get(s: aiohttp.ClientSession, path: str, headers: dict[str, str]) -> None:
        try:
            async with s.get(edge + path, headers=headers) as r:
                await r.read()
                seen[r.status] += 1
        except aiohttp.ClientError:  # the test killed the worker answering it (WorkerRestarted)
            seen[0] += 1

    async def manage(s: aiohttp.ClientSession, path: str, body: object) -> None:
        auth = {"Authorization": f"Bearer {OPERATOR}"}
        try:
            async with s.post(f"http://127.0.0.1:{admin}{path}", json=body, headers=auth) as r:
                await r.read()
                seen[r.status] += 1
        except aiohttp.ClientError:
            seen[0] += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        for i in range(1_000_000):
            await manage(s, "/purge", {"url": "http://video.test/v/short"})
            if i % 10 == 0:
                origin.put(f"/v/pf-{i}", os.urandom(100_000))
                await manage(s, "/prefetch", [f"http://video.test/v/pf-{i}"])
            start = (i * 700_001) % (len(big) - 1000)
            await get(s, "/v/big.bin", {**video, "Range": f"bytes={start}-{start + 999}"})
            await get(s, "/v/big.bin", {**video, "Range": "bytes=0-99"})
            await get(s, "/v/big.bin", video)
            await get(s, "/v/short", video)
            await get(s, "/v/nostore", video)
            await get(s, "/v/missing", video)
            await get(s, "/v/boom", video)
            await get(s, "/v/anything", down)
            origin.put(f"/v/new-{i}", os.urandom(200_000))
            await asyncio.gather(*(get(s, f"/v/new-{i}", video) for _ in range(4)))
            await asyncio.sleep(0.1)


class PromAPI:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def get(self, path: str, **params: str) -> Any:
        async with self.session.get(self.base + path, params=params) as r:
            body = await r.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else [data["result"]]
        return result

    async def ready(self, proc: asyncio.subprocess.Process, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while True:
            assert proc.returncode is None, f"prometheus exited with {proc.returncode}"
            with contextlib.suppress(aiohttp.ClientError):
                async with self.session.get(self.base + "/-/ready") as r:
                    if r.status == 200:
                        return
            assert time.monotonic() < deadline, f"prometheus not ready after {seconds} s"
            await asyncio.sleep(0.2)


def node_config(tmp_path: Path, me: int, ports: list[tuple[int, int]], origin: Origin, dead: int) -> Path:
    """Node `me` (1 or 2) of the cluster whose (client, admin) ports are `ports`. Its memory tier holds no 1 MiB
    slice (an eighth of it at most), so every slice served is read from disk, where its checksum is checked."""
    port, admin = ports[me - 1]
    nodes = "".join(
        f'[[cluster.nodes]]\nid = "node{i}"\naddress = "127.0.0.1:{p}"\nadmin = "127.0.0.1:{a}"\n'
        for i, (p, a) in enumerate(ports, 1)
    )
    path = tmp_path / f"node{me}.toml"
    path.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[[admin.tokens]]\nname = "ops"\ntoken = "{OPERATOR}"\nrole = "operator"\n'
        f'[cache]\ndir = "{tmp_path / f"node{me}"}"\nmemory = "1MiB"\ndisk = "64MiB"\nslice = "1MiB"\n'
        f'[cluster]\nself = "node{me}"\nkey = "prometheus-test-cluster-key-0123456789abcdef"\n'
        f"interval = 0.2\ntimeout = 0.5\nrise = 2\nfall = 2\n{nodes}"
        f'[[sites]]\nname = "videos"\nhosts = ["video.test"]\norigins = ["{origin.url}"]\n'
        # Nothing listens on `dead`: every request for down.test is an origin connect error and a 502.
        f'[[sites]]\nname = "down"\nhosts = ["down.test"]\norigins = ["http://127.0.0.1:{dead}"]\n'
    )
    return path


def damage_slices(cache_dir: Path) -> int:
    """Flip the first byte of every 1 MiB slice file under `cache_dir` (its size kept); how many there were."""
    damaged = 0
    for f in cache_dir.rglob("*"):
        if f.is_file() and f.stat().st_size == 2**20:
            with f.open("r+b") as out:
                first = out.read(1)
                out.seek(0)
                out.write(bytes([first[0] ^ 0xFF]))
            damaged += 1
    return damaged


async def until_data(api: PromAPI, expr: str, started: float, load: asyncio.Task[None]) -> list[dict[str, Any]]:
    while True:
        assert not load.done(), "traffic stopped"
        got = await api.query(expr)
        if got:
            return got
        assert time.monotonic() - started < DEADLINE, f"no data for {expr}"
        await asyncio.sleep(SCRAPE)


async def test_every_dashboard_and_alert_expression_returns_data(origin: Origin, tmp_path: Path) -> None:
    prometheus = require(PROMETHEUS)
    ports = [(free_port(), free_port()) for _ in range(2)]
    (port, admin), prom_port, dead = ports[0], free_port(), free_port()
    edge_cfg, peer_cfg = (node_config(tmp_path, me, ports, origin, dead) for me in (1, 2))
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    prom_cfg = tmp_path / "prometheus.yml"
    prom_cfg.write_text(  # JSON is YAML
        json.dumps(
            {
                "global": {
                    "scrape_interval": f"{SCRAPE * 1000:.0f}ms",
                    "evaluation_interval": f"{SCRAPE * 1000:.0f}ms",
                },
                "rule_files": [str(tmp_path / "alerts.yml")],
                "scrape_configs": [{"job_name": "edgecache", "static_configs": [{"targets": [f"127.0.0.1:{admin}"]}]}],
            }
        )
    )
    edge_log, peer_log, prom_log = tmp_path / "edge.log", tmp_path / "peer.log", tmp_path / "prometheus.log"
    seen: Counter[int] = Counter()
    started = time.monotonic()
    async with (
        process(edge_log, sys.executable, "-m", "edgecache", "serve", "--config", str(edge_cfg)) as edge,
        process(peer_log, sys.executable, "-m", "edgecache", "serve", "--config", str(peer_cfg)) as peer,
        process(
            prom_log,
            prometheus,
            f"--config.file={prom_cfg}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ) as prom,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
    ):
        api = PromAPI(session, f"http://127.0.0.1:{prom_port}")
        for proc, log in ((edge, edge_log), (peer, peer_log)):
            with _log_tail(log):
                await wait_log(proc, log, "admin listening on")
        load = asyncio.create_task(traffic(port, admin, origin, seen))
        try:
            with _log_tail(prom_log):
                await api.ready(prom)
                # At least 3 successful scrapes of the edge.
                while True:
                    assert not load.done(), "traffic stopped"
                    got = await api.query('sum_over_time(up{job="edgecache"}[1m])')
                    if got and float(got[0]["value"][1]) >= 3:
                        break
                    assert time.monotonic() - started < DEADLINE, f"fewer than 3 scrapes in {DEADLINE} s: {got}"
                    await asyncio.sleep(SCRAPE)

                # Forwards to the peer were answered and scraped; then the peer stops and the edge's disk fails.
                await until_data(
                    api, 'edgecache_peer_response_seconds_count{job="edgecache", peer="node2"} > 0', started, load
                )
                await stop_group(peer)
                assert damage_slices(tmp_path / "node1") >= 1
                found = re.search(r"worker 0 started: pid (\d+)", edge_log.read_text(errors="replace"))
                assert found, "no worker pid in the edge's log"
                os.kill(int(found.group(1)), signal.SIGKILL)  # its parent starts another at once

                groups = (await api.get("/api/v1/rules"))["groups"]
                rules = {r["name"]: r for g in groups for r in g["rules"]}
                assert set(rules) == ALERT_NAMES
                exprs = {f"dashboard: {e}": e for e in dashboard_exprs()}
                exprs |= {
                    f"alert {name}: {base_expression(r['query'])}": base_expression(r["query"])
                    for name, r in rules.items()
                }

                # Some series appear only after their first event, and a rate needs two samples of them.
                while True:
                    assert not load.done(), "traffic stopped"
                    empty = [label for label, e in exprs.items() if not await api.query(e)]
                    if not empty:
                        break
                    assert time.monotonic() - started < DEADLINE, "no data for:\n" + "\n".join(empty)
                    await asyncio.sleep(SCRAPE)

                # The situations made above: each alert's whole expression gives its series.
                instance = f"127.0.0.1:{admin}"
                down = await until_data(api, rules["PeerDown"]["query"], started, load)
                assert [(r["metric"], r["value"][1]) for r in down] == [({"instance": instance, "peer": "node2"}, "0")]
                for name in ("DiskCorruption", "OriginErrorRate"):
                    fired = await until_data(api, rules[name]["query"], started, load)
                    assert [r["metric"] for r in fired] == [{"instance": instance}], name
                restarted = await until_data(api, rules["WorkerRestarted"]["query"], started, load)
                assert [r["metric"] for r in restarted] == [{"instance": instance, "reason": "died"}]
                rules = {r["name"]: r for g in (await api.get("/api/v1/rules"))["groups"] for r in g["rules"]}
                assert {n: (r["health"], r.get("lastError", "")) for n, r in rules.items()} == {
                    n: ("ok", "") for n in ALERT_NAMES
                }
        finally:
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
    # The traffic was what it meant to be: cached ranges, whole objects, a 404, origin 5xx, a dead origin, and
    # the purges (200) and prefetch jobs (202) it asked for.
    assert {206, 200, 202, 404, 500, 502} <= set(seen), seen
    assert edge.returncode is not None
    assert peer.returncode is not None
    assert prom.returncode is not None


def test_promtool_accepts_rules_and_scrape_configs(tmp_path: Path) -> None:
    promtool = require(PROMTOOL)
    r = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(ALERT_NAMES)} rules found" in r.stdout
    for alert in ALERT_NAMES:
        assert f"alert: {alert}\n" in ALERTS.read_text()
    # Each scrape config next to a copy of alerts.yml, as it is deployed (rule_files is relative).
    for config in (SCRAPE_CONFIG, ROOT / "config" / "docker" / "prometheus-docker.yml"):
        where = tmp_path / config.parent.name
        where.mkdir()
        shutil.copy(config, where / "prometheus.yml")
        shutil.copy(ALERTS, where / "alerts.yml")
        r = subprocess.run(
            [promtool, "check", "config", str(where / "prometheus.yml")],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=where,
        )
        assert r.returncode == 0, f"{config}: {r.stdout}{r.stderr}"


def test_dashboard_uses_only_metrics_edgecache_exports() -> None:
    """A typo in a metric name would be an empty panel: every edgecache_* name must be one metrics.py exports."""
    exported = samples()
    dashboard = json.loads(DASHBOARD.read_text())
    used = set(re.findall(r"\bedgecache_[a-z_]+", "\n".join(dashboard_exprs()) + ALERTS.read_text()))
    assert used, "no edgecache metric in the dashboard"
    assert used <= exported, used - exported
    assert dashboard["schemaVersion"] >= 36
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
