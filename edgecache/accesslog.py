"""The access log: one JSON line per request, written by a thread so the event loop only enqueues a string.

A line is pure ASCII JSON: anything else, and the lone surrogates that stand for a client's non-UTF-8 bytes
(aiohttp decodes heads with surrogateescape), is a \\u escape, so every request yields exactly one line any JSON
reader can parse, and no value can make the writer fail to encode it. The queue holds at most `max_queued`
lines: when the writer cannot keep up (a slow or stuck disk), later lines are dropped and counted
(edgecache_access_log_dropped_total) rather than held in memory. A line the writer fails to write is counted
the same way; the writer itself never stops before close().

The writer follows logrotate by itself: when the file it writes is moved or deleted, it opens the path again
(checked at most once a second, off the loop). SIGUSR1 forces a reopen for copy-truncate rotation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import IO, Any

from edgecache import metrics

log = logging.getLogger(__name__)

_STOP = object()
MAX_QUEUED = 16_384  # lines waiting for the writer (a few MiB); past it, lines are dropped and counted
_BATCH = 1024


def _text(value: object) -> str:
    """json's fallback for values it has no form for: bytes keep every byte (as surrogates, then escaped)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


# Made once: json.dumps given any option makes an encoder for each call, a tenth of what a line costs the loop.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_text)


def encode(record: dict[str, Any]) -> str:
    """One log line for `record`: ASCII JSON, whatever its values hold."""
    return _ENCODER.encode(record)


# The process's standard output (a container's log, which its runtime rotates): written through fd 1 itself. A pipe
# the runtime made as root cannot be opened again by path by the node's own user (EACCES, as a Kubernetes pod's
# runAsUser is), and it is never moved or rotated under the node.
STDOUT = Path("/dev/stdout")


def check_writable(path: Path) -> None:
    """What a worker's log will do at its start, done once by the parent before any worker: make the directory and
    open the file for appending. OSError says why not."""
    if path == STDOUT:
        os.fstat(1)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8"):
        pass


class AccessLog:
    def __init__(self, path: Path | None, max_queued: int = MAX_QUEUED) -> None:
        self.path = path
        self.max_queued = max_queued
        # Query parameters no line holds, in a target logged as sent or a Referer: every site's signed-URL token
        # parameters (proxy.shared sets them with the sites).
        self.never: frozenset[str] = frozenset()
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._reopen = threading.Event()
        self._thread: threading.Thread | None = None
        if path is not None:
            with contextlib.suppress(OSError):  # the writer says so and counts the lines it loses: the worker serves on
                path.parent.mkdir(parents=True, exist_ok=True)
            self._thread = threading.Thread(target=self._write_forever, name="access-log", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self._thread is not None

    def write(self, record: dict[str, Any]) -> None:
        if self._thread is None:
            return
        # One thread (the event loop's) puts lines, so checking the size first bounds the queue exactly.
        if self._queue.qsize() >= self.max_queued:
            metrics.ACCESS_LOG_DROPPED.inc()
            return
        self._queue.put(encode(record))

    def reopen(self) -> None:
        self._reopen.set()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=10)
            self._thread = None

    def _open(self) -> tuple[IO[str], int]:
        assert self.path is not None
        if self.path == STDOUT:
            f = os.fdopen(os.dup(1), "a", encoding="utf-8")
        else:
            f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - the writer thread owns it until reopened
        return f, os.fstat(f.fileno()).st_ino

    def _write_forever(self) -> None:
        f: IO[str] | None = None
        inode = 0
        checked = time.monotonic()
        failing = False  # said once when writing starts to fail, once when it works again: not once a batch
        try:
            f, inode = self._open()  # before the first line
        except Exception:
            log.exception("access log: cannot open %s", self.path)
            failing = True
        try:
            while True:
                lines = [self._queue.get()]
                while not self._queue.empty() and len(lines) < _BATCH:  # batch what is already waiting
                    lines.append(self._queue.get_nowait())
                stop = _STOP in lines
                text = [line for line in lines if isinstance(line, str)]
                try:
                    if self._reopen.is_set() or time.monotonic() - checked > 1.0:
                        checked = time.monotonic()
                        f, inode = self._current(f, inode)
                    if f is None:  # it failed within the last second: not tried again before then
                        raise OSError("the access log is not open")
                    f.write("".join(f"{line}\n" for line in text))
                    f.flush()
                    if failing:
                        log.warning("access log: writing to %s again", self.path)
                        failing = False
                except Exception:  # a full disk, a bad path: lose these lines (counted), not the writer
                    if not failing:
                        log.exception("access log: lines not written to %s (counted in dropped)", self.path)
                        failing = True
                    metrics.ACCESS_LOG_DROPPED.inc(len(text))
                    self._close(f)
                    f = None
                if stop:
                    return
        finally:
            self._close(f)

    def _current(self, f: IO[str] | None, inode: int) -> tuple[IO[str], int]:
        """The file to write to: `f`, unless a reopen is asked for or the path now names another file."""
        if f is not None and not self._reopen.is_set() and not self._moved(inode):
            return f, inode
        self._reopen.clear()
        self._close(f)
        return self._open()

    @staticmethod
    def _close(f: IO[str] | None) -> None:
        if f is not None:
            try:
                f.close()
            except OSError:  # its buffered lines are lost with it; the next batch opens the path again
                log.exception("access log: closing failed")

    def _moved(self, inode: int) -> bool:
        assert self.path is not None
        if self.path == STDOUT:
            return False
        try:
            return os.stat(self.path).st_ino != inode
        except FileNotFoundError:
            return True
