"""Every dependency is pinned to the range this suite is run against, upper bound included, and the installed
release is inside it: a release nobody tested must not reach a node (or CI) through `pip install`."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _requirements() -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    return [Requirement(r) for r in reqs]


@pytest.mark.parametrize("req", _requirements(), ids=lambda r: r.name)
def test_pinned_with_an_upper_bound(req: Requirement) -> None:
    operators = {spec.operator for spec in req.specifier}
    assert operators & {">=", "=="}, f"{req.name}: no lower bound"
    assert operators & {"<", "==", "~="}, f"{req.name}: no upper bound"


@pytest.mark.parametrize("req", _requirements(), ids=lambda r: r.name)
def test_installed_release_is_inside_the_pinned_range(req: Requirement) -> None:
    installed = version(req.name)
    assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} is outside {req.specifier}"


def test_every_package_the_code_imports_is_a_pinned_dependency() -> None:
    """A module of another distribution imported by edgecache, not only through a dependency of ours."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    declared = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    providers = packages_distributions()
    imported: set[str] = set()
    for path in (PYPROJECT.parent / "edgecache").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    outside = imported - set(sys.stdlib_module_names) - {"edgecache"}
    undeclared = {
        m: providers.get(m) for m in outside if not {canonicalize_name(d) for d in providers.get(m, [m])} & declared
    }
    assert undeclared == {}
