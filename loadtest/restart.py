"""How fast a SIGKILLed worker is replaced: a real `edgecache serve` node (two workers, one-origin mode, on
127.0.0.1), each of its workers killed in turn; per kill, the seconds until the successor logs that it listens,
until every connection opened right after the kill has its answer (those queued on the dead worker's listener wait
for the successor), and the successor's CPU seconds until it listened (/proc/PID/task/*/schedstat).

    python -m loadtest.restart --port 21210 --kills 10

Kills alternate between the two workers, --every seconds apart: a worker killed within supervisor.STABLE_SECONDS
of its start is restarted after a back-off, which is not what is measured here.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CONNECTIONS = 16  # opened right after a kill: with two listeners, all 16 land on the live one once in 65,536


class _Origin(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.send_header("Cache-Control", "max-age=60")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args: object) -> None:
        pass


class Node:
    def __init__(self, port: int, origin: int, directory: Path, script: bool) -> None:
        command = [shutil.which("edgecache") or "edgecache"] if script else [sys.executable, "-m", "edgecache"]
        argv = [*command, "serve", "--origin", f"http://127.0.0.1:{origin}"]
        argv += ["--listen", f"127.0.0.1:{port}", "--workers", "2", "--cache-dir", str(directory)]
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE)  # the tree run from: A/B of two worktrees
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.pids: dict[int, int] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.put((time.monotonic(), raw.decode(errors="replace")))

    def until(self, pattern: str, timeout: float = 120.0) -> tuple[float, re.Match[str]]:
        end = time.monotonic() + timeout
        while True:
            at, line = self.lines.get(timeout=max(0.0, end - time.monotonic()))
            if (found := re.search(r"worker (\d+) started: pid (\d+)", line)) is not None:
                self.pids[int(found[1])] = int(found[2])
            if (match := re.search(pattern, line)) is not None:
                return at, match

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def _answers(port: int) -> list[float]:
    """Open CONNECTIONS, send a request on each; when each one's first bytes came (monotonic)."""
    sel = selectors.DefaultSelector()
    for _ in range(CONNECTIONS):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        sel.register(s, selectors.EVENT_READ)
    times: list[float] = []
    while len(times) < CONNECTIONS:
        for key, _ in sel.select(60):
            times.append(time.monotonic())
            sel.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
    return times


def _cpu(pid: int) -> float:
    """Seconds on CPU of the process's threads (schedstat, ns): clock ticks (10 ms) were too coarse for a fork."""
    return sum(int((task / "schedstat").read_text().split()[0]) for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9


def _dead(pid: int) -> None:
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return
        if state == "Z":
            return
        time.sleep(0.0005)


def measure(port: int, kills: int, every: float, script: bool) -> list[tuple[float, float, float, int]]:
    origin = ThreadingHTTPServer(("127.0.0.1", port + 1), _Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    rows: list[tuple[float, float, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="restart-") as tmp:
        node = Node(port, port + 1, Path(tmp), script)
        try:
            for _ in range(2):
                node.until(r"w\d INFO .*edgecache listening on")
            for kill in range(kills):
                slot = kill % 2
                victim = node.pids[slot]
                t0 = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                _dead(victim)
                answered = _answers(port)
                at, _ = node.until(rf"w{slot} INFO .*edgecache listening on")
                successor = node.pids[slot]
                queued = [t - t0 for t in answered if t - at > -0.05]
                row = (at - t0, max(answered) - t0, _cpu(successor), len(queued))
                rows.append(row)
                print(
                    f"kill {kill} w{slot}: listening {row[0]:.3f} s, queued answered {row[1]:.3f} s "
                    f"({row[3]} queued), successor CPU {row[2]:.3f} s",
                    flush=True,
                )
                time.sleep(max(0.0, every - (time.monotonic() - t0)))
        finally:
            node.stop()
            origin.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="the node's listener; the origin takes port + 1")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--every", type=float, default=16.0, help="seconds between kills (default 16)")
    parser.add_argument(
        "--script", action="store_true", help="run the `edgecache` console script (as the image does), not python -m"
    )
    args = parser.parse_args()
    rows = measure(args.port, args.kills, args.every, args.script)
    for name, i in (("listening", 0), ("queued answered", 1), ("successor CPU", 2)):
        values = sorted(r[i] for r in rows)
        print(f"{name}: median {statistics.median(values):.3f} s, min {values[0]:.3f}, max {values[-1]:.3f}")


if __name__ == "__main__":
    main()
