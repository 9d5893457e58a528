"""The metric families edgecache/metrics.py exports, as /metrics names them: for the tests that check the docs,
the dashboard and the alert rules against them."""

from __future__ import annotations

from prometheus_client.metrics import MetricWrapperBase

from edgecache import metrics
from edgecache.metricturn import TurnCounter, TurnHistogram

SUFFIXES = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}


def families() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each family's name as documented (a counter's with `_total`): its type and label names."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for m in vars(metrics).values():
        if isinstance(m, metrics.ParentCounter):
            found[m.name + "_total"] = ("counter", (m.label,))
        wrapped = m.wrapped if isinstance(m, TurnCounter | TurnHistogram) else m
        if isinstance(wrapped, MetricWrapperBase):
            for d in wrapped.describe():
                name = d.name + ("_total" if d.type == "counter" else "")
                found[name] = (d.type, tuple(wrapped._labelnames))
    return found


def samples() -> set[str]:
    """Every sample name the families give: a counter's `_total`, a histogram's `_bucket`, `_sum` and `_count`."""
    out = set()
    for name, (kind, _) in families().items():
        base = name.removesuffix("_total") if kind == "counter" else name
        out |= {base + suffix for suffix in SUFFIXES[kind]}
    return out
