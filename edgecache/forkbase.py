"""What multiprocessing's fork server imports once, before it forks any worker (supervisor): all that a worker runs,
so a worker is replaced without an interpreter start and its imports, most of a restart's CPU (loadtest.restart).

Imports, and what makes forking from here sound and cheap: nothing here may start a thread (the fork server
forks), open an event loop, or leave a file open that a worker would inherit. One import makes files: with several
workers, edgecache.metrics' objects open this process's value files in PROMETHEUS_MULTIPROC_DIR. A worker forked
from here opens its own at its first use (prometheus_client compares the pid), so this process's would only hold
zeros that every scrape reads, and nothing would ever remove them (the parent folds and removes a worker's when it
dies): they are removed here, once made.
"""

from __future__ import annotations

import gc
import os
import signal
from pathlib import Path

import uvloop  # noqa: F401

# What a worker imports, once here: the serving code, its entry (supervisor._worker) and edgecache.cli, which the
# `edgecache` console script (the image's entry point) imports: multiprocessing runs that script again in every
# process it starts, as __mp_main__ (python -m edgecache it does not).
import edgecache.cli
import edgecache.server
import edgecache.supervisor  # noqa: F401
from edgecache import metrics, metricturn  # noqa: F401
from edgecache.lifecycle import FORK_HELD


def _forget_metric_files() -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        for path in Path(directory).glob(f"*_{os.getpid()}.db"):
            path.unlink(missing_ok=True)


_forget_metric_files()
# Blocked here too, not only as it began (lifecycle.held_for_forks): a start of multiprocessing's resource tracker
# unblocks SIGTERM in the process that starts it, and the fork server is started again after one if it died.
signal.pthread_sigmask(signal.SIG_BLOCK, FORK_HELD)
# What was imported, out of the collector's sight: a worker's collections would write into every object's header,
# and copy each page it shares with this process (Python's gc.freeze documentation, "before fork()").
gc.collect()
gc.freeze()
