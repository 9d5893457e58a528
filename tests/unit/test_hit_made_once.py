"""A Hit is made in one place (proxy.hit.decided), whether from a stored entry (lookup.find_hit) or from a fill's
head alone (fillplan.basis): two calls of its 21 positional fields could not be kept in step when a field is added.
copied() makes the same Hit again from its own fields, in their order."""

from __future__ import annotations

import ast
import dataclasses
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from edgecache.core.freshness import Use, initial_age
from edgecache.core.purge import PurgeTable
from edgecache.proxy.hit import Hit, decided
from edgecache.proxy.respond import Planned

PKG = Path(__file__).resolve().parents[2] / "edgecache"


def test_hit_is_constructed_only_by_decided_and_copied() -> None:
    makers = set()
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Call) and (
                    (isinstance(node.func, ast.Name) and node.func.id == "Hit")
                    or (isinstance(node.func, ast.Attribute) and node.func.attr == "Hit")
                ):
                    makers.add(f"{path.relative_to(PKG)}:{func.name}")
    assert makers == {"proxy/hit.py:decided", "proxy/hit.py:copied"}


@pytest.mark.parametrize(("fills", "failover"), [(True, False), (False, True)])
def test_decided_gives_each_field_its_own_value(fills: bool, failover: bool) -> None:
    """decided() calls Hit with its fields in order: each must land in its own field (ints, floats and bools of the
    same type side by side would swap unnoticed by mypy)."""
    ring, router, site, record, layout = object(), object(), object(), object(), object()
    purges = PurgeTable()
    cluster = SimpleNamespace(ring=ring)
    shared = SimpleNamespace(
        cluster=cluster, router=router, engine=SimpleNamespace(store=SimpleNamespace(purges=purges))
    )
    req = SimpleNamespace(site=site)
    meta = SimpleNamespace(headers=[("Age", "7")], request_time=100.0, response_time=103.0)
    fields = [("X", "y")]
    planned = Planned(299, fields, 3, 9, b"text", None, cast(Any, layout))
    hit = decided(
        cast(Any, shared), cast(Any, req), cast(Any, meta), planned,
        record=cast(Any, record), valid_until=11.5, viewer="192.0.2.9", fills=fills, use=Use.STALE_OK, changes=-7,
        failover=failover, fresh_until=12.5,
    )  # fmt: skip
    want = {
        "status": 299, "headers": fields, "req": req, "meta": meta, "first": 3, "last": 9, "site": site,
        "router": router, "ring": ring, "record": record, "purges": weakref.ref(purges), "valid_until": 11.5,
        "viewer": "192.0.2.9", "fills": fills, "use": Use.STALE_OK, "body": b"text", "changes": -7, "parts": layout,
        "failover": failover, "fresh_until": 12.5, "initial_age": initial_age(meta.headers, 100.0, 103.0),
    }  # fmt: skip
    assert {f.name: getattr(hit, f.name) for f in dataclasses.fields(Hit)} == want
    assert want["initial_age"] == 10.0  # Age 7 plus the 3 s the response took: no field shares its value
