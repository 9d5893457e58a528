"""`edgecache sign URL --site NAME --expires 1h [--client IP] [--prefix /dir/]`: print a signed URL.

The token is made with the site's first secret, by core.signing.sign, the function the edge checks against; a
provider's backend makes the same tokens from the scheme README "Signed URLs" writes down.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from edgecache import config as cfg
from edgecache.core.route import Router, normalise_host
from edgecache.core.signing import sign

_DURATION = re.compile(r"([0-9]{1,9})([smhd]?)", re.ASCII)
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], default_config: Path) -> None:
    s = sub.add_parser("sign", help="print a signed URL of a site with [sites.signing]")
    s.add_argument("url", help="http://host/path (or /path with --site)")
    s.add_argument("--site", help="the site whose secret signs (default: the one serving the URL's host)")
    s.add_argument("--expires", required=True, help="how long the URL is valid: 90s, 30m, 1h, 7d or seconds")
    s.add_argument("--client", help="the client address the URL is bound to (sites with client = true)")
    s.add_argument("--prefix", help="sign this path prefix instead of the path, e.g. /videos/123/ (HLS/DASH sets)")
    s.add_argument("--config", type=Path, help=f"TOML config (default: {default_config})")


def duration(text: str) -> int:
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"--expires: {text!r} is not a duration such as 90s, 30m, 1h or 7d")
    seconds = int(m.group(1)) * _UNIT[m.group(2)]
    if seconds < 1:  # valid while now < expires: a URL of 0 s is expired as it is printed
        raise ValueError(f"--expires: {text!r}: must be at least 1 second")
    return seconds


def signed_url(config: cfg.Config, url: str, site_name: str | None, seconds: int, now: float, **kw: str | None) -> str:
    """The URL with a token valid for `seconds` from `now`; ValueError says why there can be none."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    by_name = {s.name: s for s in config.sites}
    site = by_name.get(site_name) if site_name else None
    if site_name and site is None:
        raise ValueError(f"--site: no site is named {site_name!r}")
    if parts.netloc:
        host = normalise_host(parts.netloc)
        serving = Router((s.hosts, s) for s in config.sites).match(host) if host else None
        if serving is None:
            raise ValueError(f"no site serves {parts.netloc!r}")
        if site is not None and serving is not site:
            raise ValueError(f"{parts.netloc!r} is not a host of site {site.name!r}")
        site = serving
    if site is None:
        raise ValueError("give a URL with a host, or --site")
    if site.signing is None:
        raise ValueError(f"site {site.name!r} has no [sites.signing] table")
    token = sign(site.signing, target, int(now) + seconds, kw.get("client"), kw.get("prefix"))
    return f"{parts.scheme}://{parts.netloc}{token}" if parts.netloc else token


def run(args: argparse.Namespace, default_config: Path) -> int:
    config = cfg.load(args.config or default_config)
    try:
        seconds = duration(args.expires)
        print(signed_url(config, args.url, args.site, seconds, time.time(), client=args.client, prefix=args.prefix))
    except ValueError as exc:
        print(f"edgecache sign: {exc}", file=sys.stderr)
        return 2
    return 0
