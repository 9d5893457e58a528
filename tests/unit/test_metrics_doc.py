"""docs/metrics.md against edgecache/metrics.py: every family exported is listed with its type and labels, every
listed one is exported, and every metric the README and docs name (with the labels they give it) exists."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.metricnames import families, samples

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"
_ROW = re.compile(r"^\| `(edgecache_[a-z_]+)` \| ([a-z]+) \| ([a-z_, -]+) \| .* \|$", re.M)
# A metric named in prose, with the labels it is given there: `edgecache_x_total{site,kind="malformed"}`.
_NAMED = re.compile(r"\b(edgecache_[a-z_]+)(?:\{([^}]*)\})?")


def listed() -> dict[str, tuple[str, tuple[str, ...]]]:
    rows = _ROW.findall(DOC.read_text())
    table = {name: (kind, () if labels == "-" else tuple(labels.split(", "))) for name, kind, labels in rows}
    assert len(table) == len(rows), "a metric listed twice"
    return table


def test_docs_metrics_lists_every_family_with_its_type_and_labels() -> None:
    doc, code = listed(), families()
    assert set(doc) == set(code), f"listed, not exported: {set(doc) - set(code)}; not listed: {set(code) - set(doc)}"
    assert {n: v for n, v in doc.items() if v != code[n]} == {}, "type or labels differ from edgecache/metrics.py"


def test_every_metric_the_readme_and_docs_name_exists_with_the_labels_they_give_it() -> None:
    code = families()
    names = samples() | set(code)  # a histogram by its family name too
    texts = [ROOT / "README.md", ROOT / "loadtest" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    wrong = []
    for path in texts:
        for m in _NAMED.finditer(path.read_text()):
            name, labels = m.group(1), m.group(2)
            if name not in names:
                wrong.append(f"{path.name}: {name} is not a metric edgecache exports")
                continue
            family = next(f for f in (name, name + "_total", re.sub(r"_(bucket|sum|count)$", "", name)) if f in code)
            given = {part.split("=")[0].strip() for part in labels.split(",")} if labels else set()
            if not given <= set(code[family][1]):
                wrong.append(f"{path.name}: {m.group(0)}: {family} has labels {code[family][1]}")
    assert wrong == []


def test_docs_metrics_lists_every_alert_with_its_for_and_severity() -> None:
    groups = yaml.safe_load((ROOT / "config/prometheus/alerts.yml").read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    code = {r["alert"]: (r.get("for", "-"), r["labels"]["severity"]) for r in rules}
    rows = re.findall(r"^\| `([A-Za-z]+)` \| .* \| ([0-9a-z-]+) \| ([a-z]+) \|$", DOC.read_text(), re.M)
    assert {name: (lasting, severity) for name, lasting, severity in rows} == code
