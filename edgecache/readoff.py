"""A reload's read of the config file and the files it names (tokens, secrets, certificates), off the loop that
asked for it and bounded in time. A file on a stalled mount or a FIFO nobody writes blocks its read for as long as
it pleases: in the supervisor's own loop that stopped it reaping and replacing workers, and in a worker it held the
reload lock (every later reload waited behind it) and an executor thread the worker's exit then waited for.

Each read runs in a daemon thread of its own, which nothing waits for at exit; its caller gives up after
server.reload_timeout (READ_SECONDS by default) and keeps the running config. A thread that never returns cannot be
stopped: at most MAX_READS reads run at once in a process, and one asked beyond them is refused at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")

READ_SECONDS = 10.0  # server.reload_timeout's default: a read not ended by then is refused, the running config kept
MAX_READS = 4  # reads still under way (stalled ones among them) past which another is refused at once

_threads: list[threading.Thread] = []
_lock = threading.Lock()


def start(read: Callable[[], T], then: Callable[[], None] | None = None) -> Future[T] | None:
    """`read()` in a thread of its own, `then()` called in it once its future is done; None when MAX_READS reads
    are still under way."""
    future: Future[T] = Future()
    future.set_running_or_notify_cancel()  # from here a cancel (the caller's wait given up) changes nothing

    def run() -> None:
        try:
            future.set_result(read())
        except BaseException as exc:  # the caller's to judge, as for a call made in its own thread
            future.set_exception(exc)
        if then is not None:
            then()

    with _lock:
        _threads[:] = [t for t in _threads if t.is_alive()]
        if len(_threads) >= MAX_READS:
            return None
        thread = threading.Thread(target=run, name="edgecache-reload-read", daemon=True)
        _threads.append(thread)
    thread.start()
    return future
