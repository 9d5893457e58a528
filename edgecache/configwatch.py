"""Reloading when the config file changes (server.watch_config), for a file nobody sends a SIGHUP about: a
Kubernetes ConfigMap mount, which the kubelet updates by pointing a symlink (`..data`) at a new directory.

A thread of the supervisor looks at the file every `interval` seconds: its path with every symlink resolved, and
that file's device, inode, size and modification time. When these change, the supervisor is told as a SIGHUP
tells it, so a change is reloaded exactly as SIGHUP reloads: a file that does not load is refused, each worker
logs why, and the running config stays. A file that is missing for a moment (mid-swap, or removed) is waited for,
not reloaded. The looking runs in a thread so that a stalled file system stalls only it, never the supervisor's
loop over its workers.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

Stamp = tuple[str, int, int, int, int]


def stamp(path: str) -> Stamp | None:
    """What identifies the file's content without reading it; None if it cannot be looked at now."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except (OSError, ValueError):
        return None
    return real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class ConfigWatch:
    def __init__(self, path: str, interval: float, changed: Callable[[], None]) -> None:
        self.path = path
        self.interval = interval
        self.changed = changed  # called in the watching thread
        self._stop = threading.Event()
        self._last: Stamp | None = None
        self._thread = threading.Thread(target=self._run, name="edgecache-configwatch", daemon=True)

    def start(self) -> None:
        """From the file as it is now: a change from here on is told."""
        self._last = stamp(self.path)
        self._thread.start()

    def stop(self) -> None:
        """No call of `changed` starts after this returns (unless a stat hung longer than an interval)."""
        self._stop.set()
        self._thread.join(self.interval + 1.0)

    def _run(self) -> None:
        last = self._last
        while not self._stop.wait(self.interval):
            now = stamp(self.path)
            if now is None or now == last or self._stop.is_set():
                continue
            log.info("config file %s changed (now %s): reloading as for SIGHUP", self.path, now[0])
            try:
                self.changed()
            except OSError as exc:  # not told: try again at the next look
                log.error("config file %s changed, but the reload could not be asked for: %s", self.path, exc)
                continue
            last = now
