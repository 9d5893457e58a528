"""`edgecache serve | check-config | ring | purge | prefetch | usage | simulate | sign`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from edgecache import config as cfg
from edgecache import prefetchcmd, usagecmd
from edgecache.admincall import UNREACHABLE, admin_call
from edgecache.config.files import over_machine, unusable_disks, unusable_log
from edgecache.config.server import MAX_WORKERS
from edgecache.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "edgecache.toml"
SERVE = (
    "Run the node until SIGTERM or SIGINT (a drain, then a stop); SIGHUP reads its config file again. Either from a"
    " TOML config (--config; the shipped one serves a demo site) or in one-origin mode (--origin URL: one site for"
    " every Host, that origin behind it, the other flags in place of a config file)."
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgecache", description="A CDN edge cache node.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the node", description=SERVE)
    s.add_argument("--config", type=Path, help=f"TOML config (default: {DEFAULT_CONFIG})")
    s.add_argument("--origin", help="one-origin mode: cache everything for this origin URL")
    s.add_argument("--listen", help="HOST:PORT for --origin mode (default: 127.0.0.1:8080)")
    s.add_argument("--cache-dir", help="cache directory for --origin mode (default: var/cache)")
    s.add_argument("--memory", help="memory tier budget for --origin mode (default: 256MiB)")
    s.add_argument("--disk", help="disk tier budget for --origin mode (default: 4GiB)")
    s.add_argument("--slice", help="slice size for --origin mode (default: 1MiB)")
    s.add_argument(
        "--memory-headroom",
        help="--origin mode: RSS allowed beyond --memory before the tier shrinks (default: 64MiB; 0: off)",
    )
    s.add_argument("--admin", help="HOST:PORT of the admin listener (metrics, health) for --origin mode")
    s.add_argument("--access-log", help="access log file for --origin mode")
    s.add_argument(
        "--forward-field",
        action="append",
        metavar="NAME",
        help="--origin mode: a client field fills send although the key does not hold it (a trace id); repeatable",
    )
    s.add_argument("--workers", type=int, help="worker processes for --origin mode (default: 1)")
    s.add_argument("--tiers", choices=("inclusive", "exclusive"), help="--origin mode: cache.tiers (default inclusive)")
    s.add_argument(
        "--max-requests", type=int, help="--origin mode: requests in flight per worker (then 503; default: 10000)"
    )
    s.add_argument(
        "--watchdog",
        type=float,
        help="--origin mode: seconds a worker's loop may stop before it is replaced (default: 10; 0: off)",
    )
    s.add_argument(
        "--disk-send", choices=("pread", "sendfile"), help="how --origin mode sends disk hits (default: pread)"
    )
    _check_config_parser(sub)
    r = sub.add_parser("ring", help="which nodes own a URL, in failover order, and which are up")
    r.add_argument("url", help="e.g. http://video.example/v/123.mp4")
    r.add_argument("--config", type=Path, help=f"TOML config (default: {DEFAULT_CONFIG})")
    r.add_argument("--token", help="bearer token for the admin listener (default: $EDGECACHE_TOKEN)")
    pu = sub.add_parser("purge", help="purge a URL, a directory prefix or a site on every node (admin API)")
    what = pu.add_mutually_exclusive_group(required=True)
    what.add_argument("url", nargs="?", help="http://host/path: every variant and slice of it")
    what.add_argument("--prefix", help="http://host/dir/: everything under the directory")
    what.add_argument("--site", help="a site name: everything of the site")
    pu.add_argument("--soft", action="store_true", help="mark stale (revalidate) instead of removing")
    pu.add_argument("--config", type=Path, help=f"TOML config naming the admin listener (default: {DEFAULT_CONFIG})")
    pu.add_argument("--token", help="bearer token (default: $EDGECACHE_TOKEN)")
    prefetchcmd.add_parser(sub, DEFAULT_CONFIG)
    usagecmd.add_parser(sub)
    from edgecache import simulatecmd

    simulatecmd.add_parser(sub)
    from edgecache import signcmd

    signcmd.add_parser(sub, DEFAULT_CONFIG)
    return p


def _check_config_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser(
        "check-config",
        help="validate a config file like `nginx -t`",
        description="Exit 0 when the file is valid; else print every problem as `file: key: problem` and exit 2.",
    )
    c.add_argument("file", type=Path, help="the TOML config, e.g. /etc/edgecache/edgecache.toml")


def _call_admin(config: cfg.Config, path: str, body: dict[str, object], token: str | None, expect: int) -> int:
    """POST to the admin API, print its JSON answer; exit status 0 when it answered `expect`."""
    import json
    import os

    if config.admin is None:
        raise ConfigError([f"{config.source}: admin.listen: is required to use the admin API"])
    status, answer = admin_call(config, token or os.environ.get("EDGECACHE_TOKEN") or "", "POST", path, body)
    if status == 0:
        print(answer["error"], file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    return 0 if status == expect else 1


def _purge(args: argparse.Namespace) -> int:

    config = cfg.load(args.config or DEFAULT_CONFIG)
    body: dict[str, object] = {"soft": args.soft}
    if args.url:
        body["url"] = args.url
    elif args.prefix:
        body["prefix"] = args.prefix
    else:
        body["site"] = args.site
    return _call_admin(config, "/purge", body, args.token, expect=200)


def _ring(args: argparse.Namespace) -> int:
    """Ask the node's admin listener (live health); without one, compute the order from the config alone."""
    import os
    import urllib.parse

    config = cfg.load(args.config or DEFAULT_CONFIG)
    if config.admin is not None:
        query = urllib.parse.urlencode({"url": args.url})
        token = args.token or os.environ.get("EDGECACHE_TOKEN", "")
        status, answer = admin_call(config, token, "GET", f"/ring?{query}", timeout=5)
        if status == 0 and answer["error"].startswith(UNREACHABLE):
            answer = _ring_offline(config, args.url)
        elif status in (401, 403):  # the order is the config's to tell; only the health needs the token
            why = answer.get("error") if isinstance(answer, dict) else answer
            print(
                f"edgecache ring: {config.admin} answered {status} ({why}): the owner order from the "
                "config, health unknown (--token or $EDGECACHE_TOKEN, of a token in [[admin.tokens]], for live "
                "health)",
                file=sys.stderr,
            )
            answer = _ring_offline(config, args.url)
    else:
        answer = _ring_offline(config, args.url)
    if "error" in answer:
        print(f"{args.url}: {answer['error']}", file=sys.stderr)
        return 1
    print(f"{answer['url']} -> key {answer['key']!r} (site {answer['site']})")
    for i, node in enumerate(answer.get("owners", [])):
        up = {True: "up", False: "DOWN", None: "unknown"}[node.get("up")]
        me = "  (this node)" if node.get("self") else ""
        print(f"  {i + 1}. {node['id']:<16} {node['address']:<24} weight {node['weight']:<5} {up}{me}")
    if not answer.get("owners"):
        print("  (no cluster configured: this node serves everything)")
    return 0


def _ring_offline(config: cfg.Config, url: str) -> dict[str, object]:
    from edgecache.cluster.view import ClusterView
    from edgecache.core.siteurl import NotSiteURL
    from edgecache.proxy.shared import Shared

    view = ClusterView(config.cluster) if config.cluster is not None else None
    try:
        answer = Shared(config.sites, None, None, view).ring_view(url)  # type: ignore[arg-type]
    except NotSiteURL as exc:
        return {"url": url, "error": str(exc)}
    owners = answer.get("owners")
    if isinstance(owners, list):
        for node in owners:
            node["up"] = None  # health is only known to a running node
    return answer


# serve's one-origin flags: their defaults, and the key a config file sets instead (a flag beside --config, which
# it would not change, is refused).
_ONE_ORIGIN: dict[str, tuple[object, str]] = {
    "listen": ("127.0.0.1:8080", "server.listen"),
    "cache_dir": ("var/cache", "cache.dir"),
    "memory": ("256MiB", "cache.memory"),
    "disk": ("4GiB", "cache.disk"),
    "slice": ("1MiB", "cache.slice"),
    "memory_headroom": ("64MiB", "cache.memory_headroom"),
    "admin": (None, "admin.listen"),
    "access_log": (None, "log.access"),
    "forward_field": ([], "sites.forward_fields"),
    "workers": (1, "server.workers"),
    "tiers": ("inclusive", "cache.tiers"),
    "max_requests": (10_000, "server.max_requests"),
    "watchdog": (10.0, "server.watchdog"),
    "disk_send": ("pread", "server.disk_send"),
}


def _serve_config(args: argparse.Namespace) -> cfg.Config:
    """The config `serve` runs: one-origin mode's from the flags, or the file's."""
    given = [name for name in _ONE_ORIGIN if getattr(args, name) is not None]
    if args.origin and args.config:
        raise ConfigError(["command line: --config: give --origin (one-origin mode) or --config, not both"])
    if args.origin:
        for name, (default, _) in _ONE_ORIGIN.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
        return _one_origin(args)
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        keys = ", ".join(_ONE_ORIGIN[name][1] for name in given)
        raise ConfigError([f"command line: {flags}: one-origin mode's (--origin); a config file sets {keys}"])
    return cfg.load(args.config or DEFAULT_CONFIG)


def _one_origin(args: argparse.Namespace) -> cfg.Config:
    sizes, problems = {}, []
    for flag, field in (("memory", "memory_bytes"), ("disk", "disk_bytes"), ("slice", "slice_bytes")):
        try:
            sizes[field] = cfg.parse_size(getattr(args, flag))
        except ValueError as exc:
            problems.append(f"command line: --{flag}: {exc}")
    try:
        sizes["memory_headroom"] = cfg.parse_size(args.memory_headroom)
    except ValueError as exc:
        problems.append(f"command line: --memory-headroom: {exc}")
    if not 1 <= args.workers <= MAX_WORKERS:
        problems.append(f"command line: --workers: expected 1 to {MAX_WORKERS}")
    if args.max_requests < 1:
        problems.append("command line: --max-requests: at least 1")
    if problems:
        raise ConfigError(problems)
    if args.tiers == "exclusive" and args.workers > 1:
        raise ConfigError([f"command line: --tiers: {cfg.EXCLUSIVE_WORKERS} (--workers is {args.workers})"])
    try:
        watchdog = cfg.check_watchdog(args.watchdog)
    except ValueError as exc:
        raise ConfigError([f"command line: --watchdog: {exc}"]) from exc
    fields = tuple(args.forward_field)
    config = cfg.one_origin(args.origin, args.listen, args.cache_dir, args.admin, args.access_log, fields, **sizes)
    return replace(
        config,
        cache=replace(config.cache, tiers=args.tiers),
        workers=args.workers,
        disk_send=args.disk_send,
        max_requests=args.max_requests,
        watchdog=watchdog,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(prefetchcmd.route(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "check-config":
            config = cfg.load(args.file)
            if problems := unusable_disks(config) + unusable_log(config):
                raise ConfigError(problems)
            over_machine(config)
            print(f"{args.file}: ok")
            return 0
        if args.command == "ring":
            return _ring(args)
        if args.command == "sign":
            from edgecache import signcmd

            return signcmd.run(args, DEFAULT_CONFIG)
        if args.command == "purge":
            return _purge(args)
        if args.command == "prefetch":
            return prefetchcmd.run(args, DEFAULT_CONFIG)
        if args.command == "usage":
            return usagecmd.run(args)
        if args.command == "simulate":
            from edgecache import simulatecmd

            return simulatecmd.run(args)
        config = _serve_config(args)
        over_machine(config, one_origin=bool(args.origin))
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    from edgecache.supervisor import serve

    return serve(config)
