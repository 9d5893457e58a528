"""The access log: one JSON line per request, written by a thread so the event loop only enqueues a string.

The writer follows logrotate by itself: when the file it writes is moved or deleted, it opens the path again
(checked at most once a second, off the loop). SIGUSR1 forces a reopen for copy-truncate rotation.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import IO, Any

_STOP = object()


class AccessLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._reopen = threading.Event()
        self._thread: threading.Thread | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._thread = threading.Thread(target=self._write_forever, name="access-log", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self._thread is not None

    def write(self, record: dict[str, Any]) -> None:
        if self._thread is not None:
            self._queue.put(json.dumps(record, separators=(",", ":"), ensure_ascii=False))

    def reopen(self) -> None:
        self._reopen.set()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=10)
            self._thread = None

    def _open(self) -> tuple[IO[str], int]:
        assert self.path is not None
        f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - the writer thread owns it until reopened
        return f, os.fstat(f.fileno()).st_ino

    def _write_forever(self) -> None:
        f, inode = self._open()
        checked = time.monotonic()
        try:
            while True:
                item = self._queue.get()
                lines = [item]
                while not self._queue.empty() and len(lines) < 1024:  # batch what is already waiting
                    lines.append(self._queue.get_nowait())
                if self._reopen.is_set() or time.monotonic() - checked > 1.0:
                    checked = time.monotonic()
                    if self._reopen.is_set() or self._moved(inode):
                        self._reopen.clear()
                        f.close()
                        f, inode = self._open()
                f.write("".join(f"{line}\n" for line in lines if line is not _STOP))
                f.flush()
                if _STOP in lines:
                    return
        finally:
            f.close()

    def _moved(self, inode: int) -> bool:
        assert self.path is not None
        try:
            return os.stat(self.path).st_ino != inode
        except FileNotFoundError:
            return True
