"""The access log: one JSON line per request, written by a thread so the event loop only enqueues.

WatchedFileHandler reopens the file when logrotate moves it away, so rotation needs no signal; SIGUSR1 also
forces a reopen for tools that copy-truncate.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
from pathlib import Path
from typing import Any


class AccessLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._listener: logging.handlers.QueueListener | None = None
        self._file: logging.handlers.WatchedFileHandler | None = None
        self._logger = logging.getLogger(f"edgecache.access.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        if path is None:
            self._logger.disabled = True
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._file = logging.handlers.WatchedFileHandler(path, encoding="utf-8", delay=True)
        self._file.setFormatter(logging.Formatter("%(message)s"))
        self._listener = logging.handlers.QueueListener(q, self._file)
        self._logger.addHandler(logging.handlers.QueueHandler(q))
        self._listener.start()

    def write(self, record: dict[str, Any]) -> None:
        if self._listener is not None:
            self._logger.info(json.dumps(record, separators=(",", ":"), ensure_ascii=False))

    def reopen(self) -> None:
        """Close the file; the writer thread opens it again on the next line (copy-truncate rotation)."""
        if self._file is not None:
            self._file.acquire()
            try:
                if self._file.stream is not None:
                    self._file.stream.close()
                    self._file.stream = None
            finally:
                self._file.release()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        if self._file is not None:
            self._file.close()
