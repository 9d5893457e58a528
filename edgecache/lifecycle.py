"""What the parent (supervisor.py) and its workers (server.py) agree on about a worker's life: which config fields
only a restart changes, and why a worker was replaced. How long a stopping worker drains is `Config.drain`
(server.drain), read by both from the same config."""

from __future__ import annotations

from enum import StrEnum

# What a reload can change without a restart; everything else is reported as needing one. `drain` is one: a
# worker's aiohttp runner takes its shutdown timeout when it is built, and the parent's kill deadline (drain +
# KILL_AFTER) must never come before the drain of a worker it started.
RESTART_ONLY = (
    "listen",
    "tls_listen",
    "cache",
    "origin",
    "workers",
    "watchdog",
    "drain",
    "admin",
    "access_log",
    "demo_origin",
)


class Reason(StrEnum):
    """Why a worker was replaced (the label of edgecache_worker_restarts)."""

    DIED = "died"
    STUCK = "stuck"
