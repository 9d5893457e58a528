"""What the parent (supervisor.py) and its workers (server.py) agree on about a worker's life: how long a
stopping worker drains, which config fields only a restart changes, and why a worker was replaced."""

from __future__ import annotations

from enum import StrEnum

DRAIN_SECONDS = 10.0  # a stopping worker lets requests in flight run this long (server.run)
# What a reload can change without a restart; everything else is reported as needing one.
RESTART_ONLY = (
    "listen",
    "tls_listen",
    "cache",
    "origin",
    "workers",
    "watchdog",
    "admin",
    "access_log",
    "demo_origin",
)


class Reason(StrEnum):
    """Why a worker was replaced (the label of edgecache_worker_restarts)."""

    DIED = "died"
    STUCK = "stuck"
