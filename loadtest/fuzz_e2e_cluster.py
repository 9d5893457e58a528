"""The `cluster` mode of loadtest/fuzz_e2e.py: the same model origin and checks, against three real nodes as a
cluster while nodes die and come back.

    python -m loadtest.fuzz_e2e --modes cluster --seconds 120 --seed 3 --port 32000

Three `edgecache serve` processes (one worker each, 1 MiB of memory, their own cache directories) form a cluster
in front of the ModelOrigin. Every request of the clients goes to one of the three nodes at random, and every purge
to a random node's admin API. Every few seconds (`--kill-every`) one node is stopped, its process group killed with
SIGKILL or its parent sent SIGTERM, and started again a few seconds later (`--down`) on the same ports and cache
directory, while requests and purges go on. Besides fuzz_e2e_model's checks of every answer (the exact bytes of one
version, heads that agree, Age bounds, no unvalidated hit), an answer to a request sent after a purge was
acknowledged (the admin API's 200) never carries a version that purge removed (one replaced before the purge was
asked), whichever node answers it, including a node that was down when the purge was made: the README promises a
node catches up with the purges it missed before it listens ("a node starting catches up once before it listens").
A version is told by the answer's bytes (a GET's 200 or 206) or its ETag. Such an answer is `purged`, or
`purged-failed` when the node that answered was listed in the purge's `failed` (the admin API said it did not take
it). Requests refused by a node the tool has stopped, and answers cut while the node asked or any other was being
stopped, are counted apart (`down`, `cut-kill`); so are 5xx while a node is down or within the failover window after
(`5xx-failover`: `fall` health checks of `interval` plus `timeout`); a node that is not listening again within 60 s
of its start is `no-restart`, and one that has not exited 30 s after SIGTERM is `stop`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.fuzz_e2e import BAD, HOST, TOKEN, NodeLog, Run, drain_log, gen_ask, purge_request
from loadtest.fuzz_e2e_model import PATHS, SLICE, Answer, Ask, ModelOrigin, _matches, candidates, judge, judge_time

KEY = "fuzz-cluster-key-" + "0123456789abcdef" * 3
INTERVAL, TIMEOUT, FALL, RISE = 0.5, 1.0, 2, 2
FAILOVER = FALL * INTERVAL + TIMEOUT  # seconds a dead peer may still be asked before every node has it down
CLUSTER_BAD = (*BAD, "purged", "purged-failed", "no-restart", "stop", "refused")
CUTS = (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


@dataclass
class Node:
    index: int
    port: int
    admin: int
    cfg: Path
    log: NodeLog
    proc: asyncio.subprocess.Process | None = None
    reader: asyncio.Task[None] | None = None
    generation: int = 0  # one more at each stop: a client's pooled connections from before are dropped
    downs: list[list[float]] = field(default_factory=list)  # [stopped, listening again] (inf while down)

    @property
    def id(self) -> str:
        return f"node{self.index + 1}"

    def down_during(self, first: float, last: float, after: float = 0.0) -> bool:
        """Was it stopped, or back less than `after` seconds, at some time within [first, last]?"""
        return any(a <= last and b + after >= first for a, b in self.downs)


@dataclass
class Purge:
    acked: float  # time.monotonic() of the admin API's 200
    floor: int  # versions of the path numbered below it were replaced before the purge was asked
    node: str
    failed: tuple[str, ...]
    what: str


@dataclass
class ClusterRun(Run):
    nodes: list[Node] = field(default_factory=list)
    purges: dict[str, list[Purge]] = field(default_factory=dict)
    kills: int = 0


def node_config(directory: Path, nodes: list[Node], i: int, origin: str) -> str:
    members = "".join(
        f'[[cluster.nodes]]\nid = "{n.id}"\naddress = "127.0.0.1:{n.port}"\nadmin = "127.0.0.1:{n.admin}"\n'
        for n in nodes
    )
    me = nodes[i]
    return (
        f'[server]\nlisten = ["127.0.0.1:{me.port}"]\nworkers = 1\ndrain = 1\n'
        f'[admin]\nlisten = "127.0.0.1:{me.admin}"\n'
        f'[[admin.tokens]]\nname = "ops"\ntoken = "{TOKEN}"\nrole = "operator"\n'
        f'[cache]\ndir = "{directory / me.id}"\nmemory = "1MiB"\ndisk = "64MiB"\nslice = "{SLICE}"\n'
        f"[origin]\nconnect_timeout = 2.0\nread_timeout = 10.0\n"
        f'[cluster]\nself = "{me.id}"\nkey = "{KEY}"\ninterval = {INTERVAL}\ntimeout = {TIMEOUT}\n'
        f"fall = {FALL}\nrise = {RISE}\n{members}"
        f'[[sites]]\nname = "videos"\nhosts = ["{HOST}"]\norigins = ["{origin}"]\n'
    )


async def start(run: ClusterRun, node: Node) -> None:
    """Starts the node in a process group of its own (so a SIGKILL reaches its worker too) and waits for it to
    listen; one that does not within 60 s is a finding, and is tried again."""
    for _ in range(3):
        node.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edgecache",
            "serve",
            "--config",
            str(node.cfg),
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert node.proc.stderr is not None
        ready = asyncio.Event()
        node.reader = asyncio.create_task(drain_log(node.proc.stderr, node.log, ready, 1))
        try:
            await asyncio.wait_for(ready.wait(), 60)
        except TimeoutError:
            run.counts["no-restart"] += 1
            run.signatures[("no-restart", f"{node.id} not listening 60 s after its start")] += 1
            await stop(run, node, signal.SIGKILL)
            continue
        if node.downs:
            node.downs[-1][1] = time.monotonic()
        return
    raise SystemExit(f"{node.id} did not start three times")


async def stop(run: ClusterRun, node: Node, how: signal.Signals) -> None:
    node.generation += 1
    if not node.downs or node.downs[-1][1] != math.inf:
        node.downs.append([time.monotonic(), math.inf])
    proc = node.proc
    assert proc is not None
    with contextlib.suppress(ProcessLookupError):
        if how == signal.SIGKILL:
            os.killpg(proc.pid, signal.SIGKILL)  # the group of the process this tool started, and its worker
        else:
            proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        run.counts["stop"] += 1
        run.signatures[("stop", f"{node.id} still running 30 s after SIGTERM")] += 1
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # a worker its parent left behind
    await proc.wait()
    if node.reader is not None:
        await node.reader


async def chaos(run: ClusterRun, rng: random.Random, every: float, down: float) -> None:
    """One node at a time: stopped, then started again on the same ports and cache directory."""
    while time.monotonic() + every + 2 * down < run.deadline:
        await asyncio.sleep(every * rng.uniform(0.5, 1.5))
        node = rng.choice(run.nodes)
        how = signal.SIGKILL if rng.random() < 0.5 else signal.SIGTERM
        for p in PATHS:
            run.origin.note(p, f"{node.id} stopped ({how.name})")
        run.kills += 1
        run.counts[f"stops {how.name}"] += 1
        await stop(run, node, how)
        await asyncio.sleep(down * rng.uniform(0.5, 1.5))
        await start(run, node)
        for p in PATHS:
            run.origin.note(p, f"{node.id} listening again")


def version_of(origin: ModelOrigin, ask: Ask, a: Answer) -> list[int]:
    """The numbers of the versions this answer can be (empty: it does not tell)."""
    etag = a.headers.get("etag")
    if etag is not None and a.status in (200, 206, 304):
        named = [v.n for v in origin.history[ask.path] if v.etag == etag.removeprefix("W/")]
        if named:
            return named
    if ask.method != "GET" or a.status not in (200, 206):
        return []
    return [v.n for v, b in candidates(origin, ask) if _matches(a, b)]


def judge_purge(run: ClusterRun, ask: Ask, a: Answer, asked: float, node: Node) -> tuple[str, str] | None:
    """Does the answer to a request sent after a purge was acknowledged carry a version that purge removed?"""
    done = [p for p in run.purges.get(ask.path, ()) if p.acked <= asked]
    if not done:
        return None
    last = max(done, key=lambda p: p.floor)
    versions = version_of(run.origin, ask, a)
    if not versions or max(versions) >= last.floor:
        return None
    back = [b for _, b in node.downs if b <= asked]
    since = f", {asked - back[-1]:.2f} s after it listened again" if back else ""
    v = next(v for v in run.origin.history[ask.path] if v.n == max(versions))
    why = (
        f"{a.status} of v{v.n} from {node.id}{since}: purge ({last.what} to {last.node}) acknowledged "
        f"{asked - last.acked:.2f} s before the request removed every version below v{last.floor}; v{v.n}: "
        f"etag={v.etag} lm={v.modified} vary={v.vary} cc={v.control!r} first asked at "
        f"{(v.first_asked or 0) - run.origin.started:.3f}"
        f"; age={a.headers.get('age')} {a.headers.get('cache-status')!r}"
    )
    return ("purged-failed" if node.id in last.failed else "purged"), why


async def request(run: ClusterRun, session: aiohttp.ClientSession, node: Node, ask: Ask) -> None:
    answer = None
    asked = time.monotonic()
    url = f"http://127.0.0.1:{node.port}{ask.path}"
    try:
        async with session.request(ask.method, url, headers=ask.headers) as r:
            answer = Answer(r.status, {k.lower(): v for k, v in r.headers.items()}, b"")
            answer.body = await r.read()
    except aiohttp.ClientConnectorError as exc:
        if node.down_during(asked, time.monotonic()):
            run.counts["down"] += 1
        else:
            run.record(ask, "refused", f"{node.id} refused though up: {str(exc)[:80]}", answer)
        return
    except CUTS as exc:
        answered = time.monotonic()
        if any(n.down_during(asked, answered) for n in run.nodes):
            run.counts["cut-kill"] += 1
        else:
            run.record(ask, "cut", f"{type(exc).__name__}: {str(exc)[:80]}", answer)
        return
    except TimeoutError:
        run.record(ask, "timeout", f"no whole answer from {node.id} within 30 s", answer)
        return
    answered = time.monotonic()
    verdict = (
        judge(run.origin, ask, answer)
        or judge_time(run.origin, ask, answer, asked, answered)
        or judge_purge(run, ask, answer, asked, node)
    )
    if verdict is None:
        run.counts[f"ok {answer.status}"] += 1
    elif verdict[0] == "5xx" and any(n.down_during(asked, answered, FAILOVER) for n in run.nodes):
        run.record(ask, "5xx-failover", f"{node.id}: {verdict[1]}", answer)
    else:
        run.record(ask, verdict[0], f"{node.id}: {verdict[1]}", answer)


async def purge(run: ClusterRun, session: aiohttp.ClientSession, rng: random.Random) -> None:
    node = rng.choice(run.nodes)
    body, targets, what = purge_request(rng)
    floors = {p: run.origin.current[p].n for p in targets}
    for p in targets:
        run.origin.note(p, f"purge {what} asked of {node.id}")
    try:
        async with session.post(
            f"http://127.0.0.1:{node.admin}/purge", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as r:
            text = await r.text()
            answer: dict[str, Any] = json.loads(text) if r.status == 200 else {"status": r.status, "text": text[:60]}
    except (aiohttp.ClientError, TimeoutError) as exc:
        for p in targets:
            run.origin.note(p, f"purge to {node.id} failed: {type(exc).__name__}")
        run.counts["purge to a stopped node" if node.downs and node.downs[-1][1] == math.inf else "purge error"] += 1
        return
    acked = time.monotonic()
    if "status" in answer:
        run.counts["unexpected"] += 1
        run.signatures[("unexpected", f"purge {answer}")] += 1
        return
    failed = tuple(str(f) for f in answer.get("failed", ()))
    run.counts["purges acknowledged"] += 1
    run.counts["purges with a failed node"] += bool(failed)
    for p in targets:
        run.origin.note(p, f"purge {what} acknowledged by {node.id}, failed {list(failed)}")
        run.purges.setdefault(p, []).append(Purge(acked, floors[p], node.id, failed, what))


async def client(run: ClusterRun, seed: int) -> None:
    rng = random.Random(seed)
    sessions: dict[int, tuple[int, aiohttp.ClientSession]] = {}
    opts = {"auto_decompress": False, "skip_auto_headers": ("Accept-Encoding", "User-Agent")}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as admin:
        try:
            while time.monotonic() < run.deadline and run.sent < run.limit:
                x = rng.random()
                if x < 0.04:
                    run.origin.mutate(rng.choice(PATHS), rng)
                    continue
                if x < 0.06:
                    await purge(run, admin, rng)
                    continue
                node = rng.choice(run.nodes)
                generation, session = sessions.get(node.index, (-1, None))
                if session is None or generation != node.generation:  # no connection from before a stop
                    if session is not None:
                        await session.close()
                    session = aiohttp.ClientSession(timeout=timeout, **opts)  # type: ignore[arg-type]
                    sessions[node.index] = (node.generation, session)
                run.sent += 1
                await request(run, session, node, gen_ask(rng, run.origin, 0.05))
        finally:
            for _, session in sessions.values():
                await session.close()


async def run_cluster(opts: argparse.Namespace, index: int) -> ClusterRun:
    origin = ModelOrigin(opts.seed * 1000 + index)
    rng = random.Random(opts.seed * 1000 + index)
    for path in PATHS:
        origin.mutate(path, rng)
    await origin.start()
    run = ClusterRun(origin, "", "", 0.0, opts.requests, history=48)
    try:
        with tempfile.TemporaryDirectory(prefix="edgecache-fuzz-cluster-") as tmp:
            base = opts.port + 8
            run.nodes = [
                Node(
                    i,
                    base + 2 * i,
                    base + 2 * i + 1,
                    Path(tmp) / f"node{i + 1}.toml",
                    NodeLog(keep=[] if opts.node_log else None),
                )
                for i in range(3)
            ]
            for i, n in enumerate(run.nodes):
                n.cfg.write_text(node_config(Path(tmp), run.nodes, i, f"http://127.0.0.1:{origin.port}"))
            try:
                await asyncio.gather(*(start(run, n) for n in run.nodes))
                run.deadline = time.monotonic() + opts.seconds
                began = time.monotonic()
                clients = [client(run, rng.randrange(2**32)) for _ in range(opts.clients)]
                await asyncio.gather(chaos(run, random.Random(rng.random()), opts.kill_every, opts.down), *clients)
                run.counts["seconds"] = round(time.monotonic() - began)
            finally:
                for n in run.nodes:
                    if n.proc is not None and n.proc.returncode is None:
                        await stop(run, n, signal.SIGTERM)
    finally:
        await origin.stop()
    run.counts["origin hits"] = origin.hits
    for n in run.nodes:
        if n.log.keep is not None:
            text = "\n".join(n.log.keep) + "\n"
            await asyncio.to_thread(Path(f"{opts.node_log}.cluster.{n.id}").write_text, text)
        run.counts[f"log lines {n.id}"] = n.log.lines
        for line in n.log.errors:
            run.signatures[("node log", f"{n.id}: {line[:120]}")] += 1
    return run
