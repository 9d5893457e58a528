"""Every dependency is pinned to the range this suite is run against, upper bound included, and the installed
release is inside it: a release nobody tested must not reach a node (or CI) through `pip install`."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

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
