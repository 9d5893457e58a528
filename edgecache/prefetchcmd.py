"""`edgecache prefetch submit FILE | list | show ID | cancel ID`: prefetch jobs through the admin API.

`edgecache prefetch FILE` (no action word) is read as `prefetch submit FILE`, as before the actions existed; a
file named like an action is given as `prefetch submit list` or `prefetch ./list`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from edgecache import config as cfg
from edgecache.admincall import admin_call
from edgecache.errors import ConfigError

ACTIONS = ("submit", "list", "show", "cancel")
EPILOG = """\
actions:
  submit FILE   send the URLs of FILE as a new job; `edgecache prefetch FILE` does the same
                (a file named like an action: `prefetch submit list` or `prefetch ./list`)
  list          the jobs this token may see, with state, progress and bytes
  show ID       one job in full
  cancel ID     stop a queued or running job (what it filled stays cached); on a finished job: forget it

states: queued (waiting for a slot), waiting-window (outside its window), running, done, cancelled,
failed (some URLs failed: see `show`). Add --json for the admin API's own answer, for scripts."""


def route(argv: list[str]) -> list[str]:
    """`prefetch FILE ...` -> `prefetch submit FILE ...`: the form without an action word keeps working."""
    if len(argv) > 1 and argv[0] == "prefetch" and argv[1] not in (*ACTIONS, "-h", "--help"):
        return [argv[0], "submit", *argv[1:]]
    return argv


def add_parser(sub: Any, default_config: Path) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help=f"TOML config naming the admin listener ({default_config})")
    common.add_argument("--token", help="bearer token (default: $EDGECACHE_TOKEN)")
    common.add_argument("--json", action="store_true", help="print the admin API's JSON answer")
    pf = sub.add_parser(
        "prefetch",
        help="fill lists of URLs into the cluster, and list, show or cancel the jobs (admin API)",
        description="edgecache prefetch [submit] FILE [options] | list | show ID | cancel ID",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = pf.add_subparsers(dest="action", required=True, metavar="{submit,list,show,cancel}")
    s = actions.add_parser("submit", parents=[common], help="send a file of URLs as a new job")
    s.add_argument("file", type=Path, help="one URL or path per line; an .m3u8 playlist expands to its segments")
    s.add_argument("--site", help="site whose first host completes lines that are paths")
    s.add_argument("--bandwidth", help="cap on bytes fetched over the network, e.g. 200MiB (per second)")
    s.add_argument("--window", help="local fill window, e.g. 02:00-06:00")
    s.add_argument("--concurrency", type=int, default=4, help="URLs of this job fetched at once (1-64)")
    s.add_argument("--priority", type=int, default=0, help="higher runs first, taking slots from lower jobs")
    actions.add_parser("list", parents=[common], help="the jobs, with state and progress")
    actions.add_parser("show", parents=[common], help="one job in full").add_argument("id", help="the job's id")
    c = actions.add_parser("cancel", parents=[common], help="cancel a queued or running job, forget a finished one")
    c.add_argument("id", help="the job's id")


def run(args: argparse.Namespace, default_config: Path) -> int:
    config = cfg.load(args.config or default_config)
    if config.admin is None:
        raise ConfigError([f"{config.source}: admin.listen: is required to use the admin API"])
    token = args.token or os.environ.get("EDGECACHE_TOKEN", "")
    if args.action == "submit":
        body = _job(args, config)
        if body is None:
            return 2
        return _answer(args, *admin_call(config, token, "POST", "/prefetch", body), expect=202, show=_submitted)
    if args.action == "list":
        return _answer(args, *admin_call(config, token, "GET", "/prefetch"), expect=200, show=_table)
    if args.action == "show":
        return _answer(args, *admin_call(config, token, "GET", f"/prefetch/{_quote(args.id)}"), expect=200, show=_one)
    return _answer(args, *admin_call(config, token, "DELETE", f"/prefetch/{_quote(args.id)}"), expect=200, show=_gone)


def _job(args: argparse.Namespace, config: cfg.Config) -> dict[str, object] | None:
    host = None
    if args.site:
        site = next((s for s in config.sites if s.name == args.site), None)
        if site is None or not [h for h in site.hosts if "*" not in h]:
            print(f"{args.site}: no such site, or it has no exact host name", file=sys.stderr)
            return None
        host = next(h for h in site.hosts if "*" not in h)
    urls = []
    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        print(f"edgecache prefetch submit: {args.file}: {reason}", file=sys.stderr)
        return None
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            urls.append(f"http://{host}{line}" if host and line.startswith("/") else line)
    body: dict[str, object] = {"urls": urls, "concurrency": args.concurrency, "priority": args.priority}
    if args.bandwidth:
        body["bandwidth"] = args.bandwidth
    if args.window:
        start, _, end = args.window.partition("-")
        body["window"] = {"start": start, "end": end}
    return body


def _quote(job_id: str) -> str:
    return urllib.parse.quote(job_id, safe="")


def _answer(args: argparse.Namespace, status: int, answer: Any, expect: int, show: Any) -> int:
    if status != expect:
        error = answer.get("error") if isinstance(answer, dict) else None
        print(f"edgecache prefetch {args.action}: {error or answer} ({status or 'no answer'})", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json else show(answer))
    return 0


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    scaled, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if scaled < 1024:
            break
        scaled, unit = scaled / 1024, bigger
    return f"{scaled:.1f} {unit}"


def _table(jobs: list[dict[str, Any]]) -> str:
    if not jobs:
        return "no prefetch jobs"
    head = ("ID", "STATE", "PRIO", "DONE/TOTAL", "FAILED", "BYTES", "NETWORK")
    lines = ["{:<16}  {:<14}  {:>4}  {:>13}  {:>6}  {:>10}  {:>10}".format(*head)]
    for j in jobs:
        done = f"{j['done']}/{j['total']}"
        failed = sum(j["failed"].values())
        lines.append(
            f"{j['id']:<16}  {j['state']:<14}  {j['priority']:>4}  {done:>13}  {failed:>6}  "
            f"{_size(j['bytes']):>10}  {_size(j['network_bytes']):>10}"
        )
    return "\n".join(lines)


def _one(job: dict[str, Any]) -> str:
    window = f"{job['window'][0]}-{job['window'][1]}" if job.get("window") else "any time"
    cap = f"{_size(job['bandwidth'])}/s" if job.get("bandwidth") else "none"
    failed = ", ".join(f"{why}: {n}" for why, n in sorted(job["failed"].items())) or "none"
    rows = [
        ("job", job["id"]),
        ("state", job["state"] + (f" ({job['error']})" if job.get("error") else "")),
        ("owner", job["owner"]),
        ("priority", job["priority"]),
        ("window", window),
        ("bandwidth", cap),
        ("concurrency", job["concurrency"]),
        ("done", f"{job['done']} of {job['total']} (eta {job['eta_seconds']} s)" if job.get("eta_seconds") else
         f"{job['done']} of {job['total']}"),
        ("fetched", job["fetched"]),
        ("already cached", job["already_cached"]),
        ("not stored", job["not_stored"]),
        ("failed", failed),
        ("dropped", job["dropped"]),
        ("bytes", f"{_size(job['bytes'])} read, {_size(job['network_bytes'])} over the network"),
    ]  # fmt: skip
    return "\n".join(f"{k + ':':<16}{v}" for k, v in rows)


def _submitted(job: dict[str, Any]) -> str:
    return f"job {job['id']}: {job['total']} URLs, {job['state']}"


def _gone(answer: dict[str, Any]) -> str:
    if "cancelled" in answer:
        return f"job {answer['cancelled']} cancelled (it was {answer['state']}); cancel it again to forget it"
    return f"job {answer['deleted']} forgotten (it was {answer['state']})"
