"""Issue 14's bounds on the code's shape: every module under 500 lines, every function under 60."""

from __future__ import annotations

import ast
from pathlib import Path

import edgecache

ROOT = Path(edgecache.__file__).parent
MODULES = sorted(ROOT.rglob("*.py"))


def test_every_module_is_under_500_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in MODULES if (n := len(p.read_text().splitlines())) >= 500}
    assert long == {}


def test_every_function_is_under_60_lines() -> None:
    long = {}
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                if (n := node.end_lineno - node.lineno + 1) >= 60:
                    long[f"{path.relative_to(ROOT)}:{node.name}"] = n
    assert long == {}
