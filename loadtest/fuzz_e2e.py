"""The `e2e` fuzz target: a model-based end-to-end check that bytes are sacred (issue 7's fuzzing, end to end).

    python -m loadtest.fuzz --target e2e                    # every mode, 60 s each, seed 1
    python -m loadtest.fuzz_e2e --modes excl --seconds 120 --seed 3
    python -m loadtest.fuzz_e2e --modes cluster --seconds 150 --seed 2   # three nodes, stopped and started again

The `cluster` mode (loadtest/fuzz_e2e_cluster.py, not among the default modes) runs the same model against three
nodes as a cluster while they are stopped and started again, and checks that no purge is undone on any node.

A real aiohttp origin on 127.0.0.1 (ModelOrigin) keeps a few objects that the run keeps changing: new versions
with and without ETag and Last-Modified, lengths that grow and shrink across slice boundaries (empty too), Vary:
Accept-Encoding on and off, Cache-Control variants, no range support; it answers 304s, 206s and 416s itself and
remembers every version's bytes it served (per variant). A real edgecache node runs as a process in front of it
(modes: one worker; the fast path off; two workers; cache.tiers = "exclusive" with a 128 KiB memory tier), and
concurrent clients send GET and HEAD, single, multi and unsatisfiable ranges, conditionals and If-Range, while
others purge (hard and soft, URL and prefix) through the admin API. Every answer is checked against what the
origin served: a body, a range or each part of a multipart answer equals exactly one version's bytes (one version
for all the parts), Content-Range, Content-Length and ETag agree with that version. Where the bytes tell the
version (a GET's 200 or 206), its Age is at most the time since the origin was first asked for that version plus a
second (the Date's resolution), and a version no cache may serve unvalidated (no-cache, max-age=0, no-store,
private), or a request with no-cache, is never answered as a hit, nor said forwarded with no origin request of it
within a second (fuzz_e2e_model.judge_time). What does not is a finding: wrong bytes and wrong heads first, then
Age and unvalidated answers, 5xx, cut bodies and hangs, counted apart, each with an example request and the
object's recent history. The op stream is seeded; the interleaving is not (real concurrency), so a finding is
reduced by hand to a deterministic test. Exit status 1 when there is any.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from loadtest.fuzz_e2e_model import ENCODINGS, PATHS, SLICE, Answer, Ask, ModelOrigin, judge, judge_time, lm_text

HOST = "video.test"
TOKEN = "fuzz-operator-token-0123456789"
BAD = ("wrong-bytes", "wrong-head", "age", "unvalidated", "5xx", "cut", "timeout", "unexpected")


# --- the requests --------------------------------------------------------------------------------------------


def point(rng: random.Random) -> int:
    if rng.random() < 0.6:
        return rng.choice((0, 1, SLICE - 1, SLICE, SLICE + 1, 2 * SLICE - 1, 2 * SLICE, 3 * SLICE, 3 * SLICE + 16))
    return rng.randrange(5 * SLICE)


def spec(rng: random.Random) -> str:
    x = rng.random()
    if x < 0.6:
        first = point(rng)
        return f"{first}-{first + rng.choice((0, 9, SLICE - 1, SLICE, 2 * SLICE + 5, rng.randrange(4 * SLICE)))}"
    if x < 0.8:
        return f"{point(rng)}-"
    return f"-{rng.choice((0, 1, 500, SLICE + 1, 6 * SLICE))}"


def gen_ask(rng: random.Random, origin: ModelOrigin, close: float) -> Ask:
    path = rng.choice(PATHS)
    headers = {"Host": HOST}
    if enc := rng.choice(ENCODINGS):
        headers["Accept-Encoding"] = enc
    x = rng.random()
    if x < 0.35:
        headers["Range"] = "bytes=" + spec(rng)
    elif x < 0.5:
        headers["Range"] = "bytes=" + ",".join(spec(rng) for _ in range(rng.choice((2, 2, 3))))
    seen = origin.history[path]
    if seen and rng.random() < 0.15:
        v = seen[-1] if rng.random() < 0.6 else rng.choice(seen)
        if v.etag and rng.random() < 0.6:
            headers["If-None-Match"] = v.etag
        elif v.modified is not None:
            headers["If-Modified-Since"] = lm_text(v.modified)
    if seen and "Range" in headers and rng.random() < 0.1:
        v = rng.choice(seen)
        headers["If-Range"] = v.etag or lm_text(v.modified or 0)
    if rng.random() < 0.05:
        headers["Cache-Control"] = "no-cache"
    if rng.random() < close:
        headers["Connection"] = "close"
    return Ask("HEAD" if rng.random() < 0.15 else "GET", path, headers)


@dataclass
class Run:
    origin: ModelOrigin
    url: str
    admin: str
    deadline: float
    limit: int
    sent: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    signatures: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[tuple[str, str], str] = field(default_factory=dict)
    history: int = 16  # the object's events an example shows, newest last

    def record(self, ask: Ask, category: str, why: str, answer: Answer | None) -> None:
        self.counts[category] += 1
        sig = (category, re.sub(r"\d+", "N", why)[:90])
        self.signatures[sig] += 1
        if sig in self.examples:
            return
        keys = ("content-range", "content-length", "etag", "cache-status")
        got = f"{answer.status} { ({k: answer.headers.get(k) for k in keys}) }" if answer else "no answer"
        history = "\n      ".join(self.origin.events[ask.path][-self.history :])
        self.examples[sig] = (
            f"    {ask.method} {ask.path} {ask.headers}\n    -> {got}\n    {why}\n    history (s, newest last):\n"
            f"      {history}"
        )


async def request(run: Run, session: aiohttp.ClientSession, ask: Ask) -> None:
    answer = None
    asked = time.monotonic()
    try:
        async with session.request(ask.method, run.url + ask.path, headers=ask.headers) as r:
            head = {k.lower(): v for k, v in r.headers.items()}
            answer = Answer(r.status, head, b"")
            answer.body = await r.read()
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        run.record(ask, "cut", f"{type(exc).__name__}: {str(exc)[:80]}", answer)
        return
    except TimeoutError:
        run.record(ask, "timeout", "no whole answer within 30 s", answer)
        return
    verdict = judge(run.origin, ask, answer) or judge_time(run.origin, ask, answer, asked, time.monotonic())
    if verdict is None:
        run.counts[f"ok {answer.status}"] += 1
    else:
        run.record(ask, *verdict, answer)


def purge_request(rng: random.Random) -> tuple[dict[str, object], tuple[str, ...], str]:
    """A purge to send: its body (a URL, one in ten a prefix of every path; soft four in ten), the paths it covers,
    and what it is ("soft url", "hard prefix", ...)."""
    path = rng.choice(PATHS)
    soft = rng.random() < 0.4
    body: dict[str, object] = {"url": f"http://{HOST}{path}", "soft": soft}
    if rng.random() < 0.1:
        body = {"prefix": f"http://{HOST}/", "soft": soft}
    targets = tuple(PATHS) if "prefix" in body else (path,)
    return body, targets, f"{'soft' if soft else 'hard'} {'prefix' if 'prefix' in body else 'url'}"


async def purge(run: Run, session: aiohttp.ClientSession, rng: random.Random) -> None:
    body, targets, what = purge_request(rng)
    for p in targets:
        run.origin.note(p, f"purge {what} asked")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with session.post(run.admin + "/purge", json=body, headers=auth) as r:
        text = await r.text()
    for p in targets:
        run.origin.note(p, f"purge answered {r.status}")
    if r.status != 200:
        run.counts["unexpected"] += 1
        run.signatures[("unexpected", f"purge {r.status} {text[:60]}")] += 1


async def client(run: Run, seed: int, close: float) -> None:
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        timeout=timeout, auto_decompress=False, skip_auto_headers=("Accept-Encoding", "User-Agent")
    ) as session:
        while time.monotonic() < run.deadline and run.sent < run.limit:
            x = rng.random()
            if x < 0.04:
                run.origin.mutate(rng.choice(PATHS), rng)
            elif x < 0.06:
                await purge(run, session, rng)
            else:
                run.sent += 1
                await request(run, session, gen_ask(rng, run.origin, close))


# --- the node ------------------------------------------------------------------------------------------------

MODES = {  # workers, fast_path, tiers, memory
    "one": (1, True, "inclusive", "1MiB"),
    "nofast": (1, False, "inclusive", "1MiB"),
    "two": (2, True, "inclusive", "1MiB"),
    "excl": (1, True, "exclusive", "128KiB"),
}


def node_config(directory: Path, mode: str, origin: str, port: int, admin: int) -> Path:
    workers, fast, tiers, memory = MODES[mode]
    cfg = directory / "edge.toml"
    cfg.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = {workers}\nfast_path = {str(fast).lower()}\n'
        f'drain = 1\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[[admin.tokens]]\nname = "ops"\ntoken = "{TOKEN}"\nrole = "operator"\n'
        f'[cache]\ndir = "{directory / "cache"}"\nmemory = "{memory}"\ndisk = "64MiB"\nslice = "{SLICE}"\n'
        f'tiers = "{tiers}"\n[origin]\nconnect_timeout = 2.0\nread_timeout = 10.0\n'
        f'[[sites]]\nname = "videos"\nhosts = ["{HOST}"]\norigins = ["{origin}"]\n'
    )
    return cfg


@dataclass
class NodeLog:
    errors: list[str] = field(default_factory=list)
    lines: int = 0
    keep: list[str] | None = None  # every line, for --node-log


async def drain_log(stream: asyncio.StreamReader, log: NodeLog, ready: asyncio.Event, workers: int) -> None:
    """Reads the node's log to its end (a full pipe would stop it); ready once every listener is up."""
    listening = admin = 0
    while line := await stream.readline():
        log.lines += 1
        text = line.decode(errors="replace").rstrip()
        if log.keep is not None:
            log.keep.append(text)
        listening += "edgecache listening on" in text
        admin += "admin listening on" in text
        if listening >= workers and admin:
            ready.set()
        if ("ERROR" in text or "Traceback" in text or "CRITICAL" in text) and len(log.errors) < 30:
            log.errors.append(text[:300])


@contextlib.asynccontextmanager
async def node(cfg: Path, workers: int, log: NodeLog) -> AsyncIterator[None]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgecache", "serve", "--config", str(cfg), stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    ready = asyncio.Event()
    reader = asyncio.create_task(drain_log(proc.stderr, log, ready, workers))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        await reader


async def run_mode(mode: str, index: int, opts: argparse.Namespace) -> tuple[Run, list[str] | None]:
    origin = ModelOrigin(opts.seed * 1000 + index)
    rng = random.Random(opts.seed * 1000 + index)
    for path in PATHS:
        origin.mutate(path, rng)
    await origin.start()
    port, admin = opts.port + 2 * index, opts.port + 1 + 2 * index
    log = NodeLog(keep=[] if opts.node_log else None)
    try:
        with tempfile.TemporaryDirectory(prefix="edgecache-fuzz-e2e-") as tmp:
            cfg = node_config(Path(tmp), mode, f"http://127.0.0.1:{origin.port}", port, admin)
            async with node(cfg, MODES[mode][0], log):
                run = Run(origin, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}", 0.0, opts.requests)
                run.deadline = time.monotonic() + opts.seconds
                close = 0.3 if MODES[mode][0] > 1 else 0.05
                start = time.monotonic()
                await asyncio.gather(*(client(run, rng.randrange(2**32), close) for _ in range(opts.clients)))
                run.counts["seconds"] = round(time.monotonic() - start)
                if MODES[mode][1]:
                    run.counts["handed off"] = await handed_off(run.admin)
    finally:
        await origin.stop()
    run.counts["origin hits"] = origin.hits
    run.counts["log lines"] = log.lines
    for line in log.errors:
        run.signatures[("node log", re.sub(r"\d+", "N", line)[:120])] += 1
    return run, log.keep


async def handed_off(admin: str) -> int:
    """The connections the node's fast path handed to aiohttp over the run (issue 14: none for a GET or HEAD, and the
    fuzz sends nothing else), from its own /metrics, every worker's added up."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session, session.get(admin + "/metrics", headers=auth) as r:
        text = await r.text()
    found = re.search(r'^edgecache_fast_path_total\{outcome="handed_off"\} (\S+)$', text, re.M)
    return int(float(found[1])) if found else 0


def report(mode: str, run: Run, categories: tuple[str, ...] = BAD) -> int:
    bad = sum(run.counts[c] for c in categories)
    counts = ", ".join(f"{k} {v:,}" for k, v in sorted(run.counts.items()))
    print(f"\n== {mode}: {run.sent:,} requests; {counts}", flush=True)
    rank = {c: n for n, c in enumerate(categories)}
    order = sorted(run.signatures.items(), key=lambda kv: (rank.get(kv[0][0], len(rank)), -kv[1]))
    for (category, why), n in order:
        print(f"  [{category}] x{n}: {why}")
        if example := run.examples.get((category, why)):
            print(example)
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.fuzz_e2e", description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated: {', '.join(MODES)} (default), or cluster"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="per mode (default 60)")
    parser.add_argument("--requests", type=int, default=50_000, help="at most, per mode (default 50,000)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--port", type=int, default=23400, help="the first of the 14 ports the modes listen on (default 23400)"
    )
    parser.add_argument("--kill-every", type=float, default=6.0, help="cluster: seconds between stops (default 6)")
    parser.add_argument("--down", type=float, default=3.0, help="cluster: seconds a node stays down (default 3)")
    parser.add_argument("--node-log", help="write each mode's node log to NODE_LOG.MODE")
    opts = parser.parse_args(argv)
    bad = 0
    for mode in opts.modes.split(","):
        if mode == "cluster":
            from loadtest.fuzz_e2e_cluster import CLUSTER_BAD, run_cluster  # it imports this module

            bad += report(mode, asyncio.run(run_cluster(opts, len(MODES))), CLUSTER_BAD)
            continue
        if mode not in MODES:
            raise SystemExit(f"no mode {mode!r}; choose from: {', '.join(MODES)}")
        run, kept = asyncio.run(run_mode(mode, list(MODES).index(mode), opts))
        if kept is not None:
            Path(f"{opts.node_log}.{mode}").write_text("\n".join(kept) + "\n")
        bad += report(mode, run)
    print(f"\n{bad:,} bad answers (wrong bytes or heads, 5xx, cut, hung, unexpected)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
