"""The layering of STYLE.md: core/ is pure, and imports point downward only."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "edgecache"
IO_MODULES = {"asyncio", "aiohttp", "diskcache", "aiofiles", "prometheus_client", "socket", "threading", "uvloop"}
# A layer may import itself and anything to its right, never to its left.
ORDER = [
    "forkbase",  # what the fork server imports before it forks workers (cli, supervisor._worker, the serving code)
    "cli",
    "supervisor",  # the parent process; it starts server.worker_main in each worker
    "forks",  # the parent's side of the fork server
    "server",
    "admin",
    "proxy",
    "cluster",
    "storage",
    "listeners",
    "watchdog",
    "lifecycle",
    "rundirs",  # the runtime directories under the temp dir (supervisor and worker)
    "metrics",
    "config",
    "core",
]


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "edgecache" and parts[1] in ORDER else None


def test_core_is_pure() -> None:
    for path in (PKG / "core").glob("*.py"):
        bad = {m for m in imports(path) if m.split(".")[0] in IO_MODULES or m == "time"}
        assert not bad, f"{path.name} imports {bad}"


def test_imports_point_downward() -> None:
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("")
        own = layer("edgecache." + ".".join(rel.parts))
        if own is None:
            continue
        for module in imports(path):
            target = layer(module)
            if target is not None:
                assert ORDER.index(target) >= ORDER.index(own), f"{rel} ({own}) imports {module} ({target})"


def test_no_proxy_module_reaches_into_the_handler() -> None:
    """The fast path takes the node's parts from proxy.shared; only the server builds the full handler."""
    for path in (PKG / "proxy").glob("*.py"):
        if path.name != "handler.py":
            assert "edgecache.proxy.handler" not in imports(path), f"proxy/{path.name} imports the handler"
