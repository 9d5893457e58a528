"""Soak: a real edge under mixed high load for N minutes, its RSS sampled every 5 s, bytes checked at the end.

    python -m loadtest.soak --minutes 10 [--memory 128MiB] [--connections 64] [--out /tmp/soak]

Everything runs on 127.0.0.1 and stops by itself: nginx serves generated content as the origin, the edge runs
in one-origin mode as its own process, wrk drives a mix of small hits, 1 MiB ranges of 64 MiB videos at random
offsets, misses over a wide key space (so both tiers keep evicting) and conditional requests. Past the mix, a
burst of far more connections than `max_requests` (128) shows 503s instead of a collapse.
Writes rss.csv and summary.txt into --out; exits 1 if a byte differs or the edge died.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from edgecache.lifecycle import WORKER_NAME

LUA = r"""
local small, videos, vsize, mib = 200, 4, 64 * 1048576, 1048576
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
request = function()
  local r = math.random()
  if r < 0.45 then
    local i = math.floor(small * math.random() ^ 3)  -- skewed: a few hot objects
    return wrk.format("GET", string.format("/small/%03d.bin", i))
  elseif r < 0.80 then
    local v, off = math.random(0, videos - 1), math.random(0, vsize - mib - 1)
    local range = string.format("bytes=%d-%d", off, off + mib - 1)
    return wrk.format("GET", string.format("/video/%d.bin", v), {Range = range})
  elseif r < 0.95 then
    return wrk.format("GET", string.format("/small/%03d.bin?miss=%d", math.random(0, small - 1), math.random(1, 1e7)))
  else
    return wrk.format("GET", "/small/001.bin", {["If-None-Match"] = '"nope"', ["Cache-Control"] = "max-age=0"})
  end
end
"""


def make_content(root: Path) -> dict[str, bytes]:
    rnd = random.Random(7)
    files: dict[str, bytes] = {}
    (root / "small").mkdir(parents=True)
    (root / "video").mkdir()
    for i in range(200):
        files[f"/small/{i:03d}.bin"] = rnd.randbytes(rnd.choice((4, 16, 64)) * 1024)
    for v in range(4):
        files[f"/video/{v}.bin"] = rnd.randbytes(64 * 2**20)
    for path, data in files.items():
        (root / path.lstrip("/")).write_bytes(data)
    return files


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_origin(root: Path, state: Path, port: int) -> subprocess.Popen[bytes]:
    conf = state / "nginx.conf"
    conf.write_text(
        f"daemon off; worker_processes 1; pid {state}/nginx.pid; error_log {state}/nginx.err;\n"
        "events { worker_connections 4096; }\n"
        f"http {{ access_log off; server {{ listen 127.0.0.1:{port}; root {root};\n"
        '  location / { add_header Cache-Control "max-age=3600"; } } }\n'
    )
    return subprocess.Popen(["nginx", "-c", str(conf)], start_new_session=True)


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:  # gone between the listing and the read (a worker being replaced)
        pass
    return 0


def workers_rss_kib(parent: int) -> int:
    """The RSS of the node's workers, which the memory bound governs: `edgecache serve` is a small parent (the
    supervisor), whose children are multiprocessing's resource tracker and fork server."""
    return sum(rss_kib(worker) for worker in worker_pids(parent))


def worker_pids(parent: int) -> list[int]:
    """The workers of the node whose parent process is `parent`, by the name each gives itself (lifecycle.WORKER_NAME):
    the fork server's children, or the parent's own once a fork server that forked them has died. Their command line
    is the fork server's, which a fork server started since has too, with no children yet."""
    below = children(parent)
    below += [grandchild for child in below for grandchild in children(child)]
    return [pid for pid in below if _comm(pid).startswith(WORKER_NAME)]


def children(pid: int) -> list[int]:
    try:
        return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    except OSError:  # it exited meanwhile
        return []


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return ""


def wait_ready(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def fetch(url: str, rng: str | None = None) -> bytes:
    req = urllib.request.Request(url, headers={"Range": rng} if rng else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return bytes(r.read())


def tier_mib(admin: int) -> tuple[float, float]:
    """The memory tier's bytes and its current limit (lowered by the RSS bound), from the admin /metrics."""
    got = {"edgecache_memory_tier_bytes": 0.0, "edgecache_memory_tier_limit_bytes": 0.0}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                name, _, value = line.partition(" ")
                if name in got:
                    got[name] = float(value)
    except OSError:
        pass
    return got["edgecache_memory_tier_bytes"] / 2**20, got["edgecache_memory_tier_limit_bytes"] / 2**20


def wrk(port: int, script: Path, seconds: int, connections: int) -> str:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script)]
    return subprocess.run([*cmd, f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=True).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--memory", default="128MiB")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "edgecache-soak")
    args = ap.parse_args()
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        print("needs wrk and nginx (apt-get install -y wrk nginx)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="edgecache-soak-"))
    work.chmod(0o755)  # nginx's workers read the content as another user
    files = make_content(work / "content")
    oport, eport, admin = free_port(), free_port(), free_port()
    origin = start_origin(work / "content", work, oport)
    edge = subprocess.Popen(
        [
            *(sys.executable, "-m", "edgecache", "serve", "--origin", f"http://127.0.0.1:{oport}"),
            *("--listen", f"127.0.0.1:{eport}", "--cache-dir", str(work / "cache"), "--memory", args.memory),
            *("--disk", "512MiB", "--max-requests", "128", "--admin", f"127.0.0.1:{admin}"),
        ],
        stderr=(args.out / "edge.log").open("wb"),
        start_new_session=True,
    )
    script = work / "mix.lua"
    script.write_text(LUA)
    failures: list[str] = []
    try:
        wait_ready(f"http://127.0.0.1:{eport}/small/000.bin")
        samples: list[tuple[float, int]] = []
        tiers: list[tuple[float, float]] = []
        t0 = time.monotonic()
        load = subprocess.Popen(
            [
                *("wrk", "-t2", f"-c{args.connections}", f"-d{int(args.minutes * 60)}s", "--timeout", "10s"),
                *("-s", str(script), f"http://127.0.0.1:{eport}"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        while load.poll() is None:
            if edge.poll() is not None:
                failures.append(f"the edge exited with {edge.returncode}")
                load.terminate()
                break
            samples.append((time.monotonic() - t0, workers_rss_kib(edge.pid)))
            tiers.append(tier_mib(admin))
            time.sleep(5)
        mix = load.communicate()[0]
        burst = wrk(eport, script, 10, 900) if edge.poll() is None else ""
        rnd = random.Random(11)
        for _ in range(20):
            path = rnd.choice(sorted(files))
            data = files[path]
            first = rnd.randrange(len(data))
            last = min(len(data) - 1, first + rnd.randrange(2 * 2**20))
            if fetch(f"http://127.0.0.1:{eport}{path}", f"bytes={first}-{last}") != data[first : last + 1]:
                failures.append(f"{path} bytes={first}-{last} differs from the origin's")
            if fetch(f"http://127.0.0.1:{eport}{path}") != data:
                failures.append(f"{path} differs from the origin's")
    finally:
        for proc in (edge, origin):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    with (args.out / "rss.csv").open("w") as f:
        f.write("seconds,rss_mib,tier_mib,tier_limit_mib\n")
        for (t, kib), (held, limit) in zip(samples, tiers, strict=True):
            f.write(f"{t:.0f},{kib / 1024:.1f},{held:.1f},{limit:.1f}\n")
    print(summary(samples, tiers, args.memory, mix, burst, failures, args.out))
    return 1 if failures else 0


def summary(
    samples: list[tuple[float, int]],
    tiers: list[tuple[float, float]],
    memory: str,
    mix: str,
    burst: str,
    failures: list[str],
    out: Path,
) -> str:
    mib = [kib / 1024 for _, kib in samples]
    tail = samples[len(samples) // 5 :]
    slope = 0.0
    if len(tail) > 1:
        xs, ys = [t / 60 for t, _ in tail], [kib / 1024 for _, kib in tail]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    per_minute = max(1, len(samples) // max(1, int(samples[-1][0] // 60) or 1)) if samples else 1
    lines = [
        f"samples: {len(samples)} (every 5 s); RSS MiB min {min(mib, default=0):.0f} max {max(mib, default=0):.0f}",
        f"first minute avg {sum(mib[:per_minute]) / max(1, len(mib[:per_minute])):.0f} MiB, "
        f"last minute avg {sum(mib[-per_minute:]) / max(1, len(mib[-per_minute:])):.0f} MiB, "
        f"slope over the last 80%: {slope:+.2f} MiB/min",
        f"memory tier budget {memory}; limit budget + 64 MiB per worker",
        "last sample: tier holds {:.0f} MiB, its limit is {:.0f} MiB".format(*(tiers[-1] if tiers else (0, 0))),
        "--- mix ---",
        mix.strip(),
        "--- burst: 900 connections against max_requests = 128 ---",
        burst.strip(),
        "--- byte checks ---",
        "\n".join(failures) if failures else "40 responses byte-exact",
    ]
    text = "\n".join(lines)
    (out / "summary.txt").write_text(text + "\n")
    return text


if __name__ == "__main__":
    sys.exit(main())
