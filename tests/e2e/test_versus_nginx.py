"""loadtest/versus_nginx.py at a tiny scale: it completes, checks every byte, and its counts add up.

The harness runs a real edgecache node and a real nginx in front of its own origin process. At this scale (a few
seconds) the figures are no measure of either cache; what is asserted is that each system served exactly the
trace, byte for byte, and fetched from the origin what its budgets allow: each distinct slice exactly once when
everything fits, and between that and a fetch per request's slices when it does not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from loadtest.versus_nginx import HOLD_LIMIT, DiskWatch, MiB, Tally, content, make_trace, replay
from tests.e2e.procs import ROOT


def run_harness(tmp_path: Path, work: Path, *scale: str) -> dict[str, Any]:
    """`work`: its TMPDIR, empty (short_tmp)."""
    out = tmp_path / "figures.json"
    r = subprocess.run(
        [sys.executable, "-m", "loadtest.versus_nginx", "--quick", *scale, "--concurrency", "4", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(work)},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "every byte as the origin's" in r.stdout
    assert list(work.iterdir()) == []  # its work directory (caches, configs, logs) is gone
    assert started_in(work) == []  # and so are the origin, the edge and nginx, which were given paths in it
    figures: dict[str, Any] = json.loads(out.read_text())
    assert set(figures["systems"]) == {"edgecache", "nginx"}
    trace = figures["trace"]
    for name, system in figures["systems"].items():
        assert system["failures"] == [], name
        assert (system["requests"], system["client_bytes"]) == (trace["requests"], trace["client_bytes"]), name
        assert (system["origin_bad"], system["origin_full_gets"]) == (0, 0), name
    return figures


def test_everything_fits_so_each_slice_is_fetched_once(tmp_path: Path, short_tmp: Path) -> None:
    figures = run_harness(
        tmp_path, short_tmp, "--content", "24MiB", "--disk", "32MiB", "--memory", "8MiB", "--served", "64MiB"
    )
    trace = figures["trace"]
    assert trace["client_bytes"] >= 64 * MiB
    assert trace["distinct_slice_bytes"] < trace["client_bytes"]  # the trace does come back to slices
    for name, system in figures["systems"].items():
        assert system["origin_bytes"] == trace["distinct_slice_bytes"], name
    assert figures["ratio"] == 1.0


def test_a_budget_below_the_content_fetches_between_the_bounds(tmp_path: Path, short_tmp: Path) -> None:
    figures = run_harness(
        tmp_path, short_tmp, "--content", "64MiB", "--disk", "16MiB", "--memory", "4MiB", "--served", "96MiB"
    )
    trace = figures["trace"]
    assert trace["distinct_slice_bytes"] > 20 * MiB  # more than both budgets together: something is evicted
    for name, system in figures["systems"].items():
        assert trace["distinct_slice_bytes"] <= system["origin_bytes"] <= trace["covering_slice_bytes"], name


def test_exclusive_tiers_serve_the_trace_exactly(tmp_path: Path, short_tmp: Path) -> None:
    """--tiers exclusive: every byte checked, and between the bounds with memory (16 MiB, slices kept there only
    until evicted to disk) and disk (16 MiB) together under the content."""
    scale = ("--content", "64MiB", "--disk", "16MiB", "--memory", "16MiB", "--served", "96MiB")
    figures = run_harness(tmp_path, short_tmp, *scale, "--tiers", "exclusive")
    trace = figures["trace"]
    assert trace["distinct_slice_bytes"] > 32 * MiB
    for name, system in figures["systems"].items():
        assert trace["distinct_slice_bytes"] <= system["origin_bytes"] <= trace["covering_slice_bytes"], name


def started_in(work: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and str(work).encode() in (proc / "cmdline").read_bytes():
                found.append(f"{proc.name}: {(proc / 'cmdline').read_bytes()!r}")
    return found


_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


async def test_the_replay_reports_a_wrong_byte_and_a_wrong_range(tmp_path: Path) -> None:
    """The check itself can fail: a server that flips one byte of one answer and misstates another's range."""
    trace = make_trace(seed=3, content_bytes=8 * MiB, served=12 * MiB)
    reqs = trace.requests()
    flipped, misplaced = (reqs[1].obj, reqs[1].first), (reqs[2].obj, reqs[2].first)
    assert flipped != misplaced

    async def serve(request: web.Request) -> web.Response:
        obj = int(request.match_info["n"])
        m = _RANGE.fullmatch(request.headers["Range"])
        assert m is not None
        first, last = int(m.group(1)), int(m.group(2))
        body = bytearray(content(obj, first, last - first + 1))
        if (obj, first) == flipped:
            body[len(body) // 2] ^= 1
        shown = first + 1 if (obj, first) == misplaced else first
        headers = {"Content-Range": f"bytes {shown}-{last}/{trace.sizes[obj]}"}
        return web.Response(status=206, body=bytes(body), headers=headers)

    app = web.Application()
    app.router.add_get("/video/{n}.mp4", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        (tmp_path / "cache").mkdir()
        tally = await replay(port, trace, 2, tmp_path / "cache")
    finally:
        await runner.cleanup()
    wrong = {(r.obj, r.first): r for r in reqs if (r.obj, r.first) in (flipped, misplaced)}
    expected = sorted(
        f"/video/{r.obj}.mp4 bytes={r.first}-{r.last}: "
        + ("MISMATCH" if (r.obj, r.first) == flipped else "status 206, Content-Range")
        for r in reqs
        if (r.obj, r.first) in wrong
    )
    assert [f[: len(e)] for f, e in zip(sorted(tally.failures), expected, strict=True)] == expected
    assert tally.requests == len(reqs)


async def test_play_is_held_while_a_cache_is_over_its_limit_and_let_go_after_the_hold_limit(tmp_path: Path) -> None:
    tally = Tally()
    watch = DiskWatch(tmp_path, 100, tally)
    watch.judge(100, 0.0)
    assert watch.open.is_set()
    watch.judge(101, 1.0)
    watch.judge(150, 5.0)
    assert not watch.open.is_set()
    watch.judge(90, 8.0)
    assert watch.open.is_set()
    assert (tally.holds, tally.held_seconds, tally.hold_timeouts) == (1, 7.0, 0)
    # A cache that stays over is let go, and not held again until it has once been within its limit.
    watch.judge(150, 10.0)
    watch.judge(150, 10.0 + HOLD_LIMIT + 1)
    assert watch.open.is_set()
    watch.judge(150, 50.0)
    assert watch.open.is_set()
    assert (tally.holds, tally.held_seconds, tally.hold_timeouts) == (2, 7.0 + HOLD_LIMIT + 1, 1)
    watch.judge(100, 51.0)
    watch.judge(101, 52.0)
    assert not watch.open.is_set()
    assert tally.holds == 3
    # No limit (--no-hold): never held.
    unheld = DiskWatch(tmp_path, None, Tally())
    unheld.judge(10**12, 0.0)
    assert unheld.open.is_set()
