"""One metric sample's value, read from that metric's collector alone.

prometheus_client's own lookup collects every metric of the process to find one sample, and the suite's process
holds thousands of labelled series by its end: a few such reads in a row blocked a test's loop for over 250 ms
(the stall probe in tests/e2e/conftest.py). This reads only the collector registered under the sample's name.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry

from edgecache.metricturn import apply


def applied() -> CollectorRegistry:
    """The process's registry, the increments of the current turn of the loop applied first (edgecache.metricturn),
    as the node's own /metrics does."""
    apply()
    return REGISTRY


def sample_value(name: str, labels: dict[str, str] | None = None) -> float | None:
    wanted = labels or {}
    for metric in applied().restricted_registry([name]).collect():
        for s in metric.samples:
            if s.name == name and s.labels == wanted:
                return float(s.value)
    return None
