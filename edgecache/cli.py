"""`edgecache serve | check-config`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgecache import config as cfg
from edgecache.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "edgecache.toml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgecache", description="A CDN edge cache node.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the node")
    s.add_argument("--config", type=Path, help=f"TOML config (default: {DEFAULT_CONFIG})")
    s.add_argument("--origin", help="one-origin mode: cache everything for this origin URL")
    s.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT for --origin mode")
    s.add_argument("--cache-dir", default="var/cache", help="cache directory for --origin mode")
    s.add_argument("--memory", default="256MiB", help="memory tier budget for --origin mode")
    s.add_argument("--disk", default="4GiB", help="disk tier budget for --origin mode")
    s.add_argument("--slice", default="1MiB", help="slice size for --origin mode")
    s.add_argument("--admin", help="HOST:PORT of the admin listener (metrics, health) for --origin mode")
    s.add_argument("--access-log", help="access log file for --origin mode")
    c = sub.add_parser("check-config", help="validate a config file like `nginx -t`")
    c.add_argument("file", type=Path)
    return p


def _one_origin(args: argparse.Namespace) -> cfg.Config:
    try:
        sizes = {
            "memory_bytes": cfg.parse_size(args.memory),
            "disk_bytes": cfg.parse_size(args.disk),
            "slice_bytes": cfg.parse_size(args.slice),
        }
    except ValueError as exc:
        raise ConfigError([f"command line: --memory/--disk/--slice: {exc}"]) from exc
    return cfg.one_origin(args.origin, args.listen, args.cache_dir, args.admin, args.access_log, **sizes)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            cfg.load(args.file)
            print(f"{args.file}: ok")
            return 0
        config = _one_origin(args) if args.origin else cfg.load(args.config or DEFAULT_CONFIG)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    from edgecache.server import serve

    serve(config)
    return 0
