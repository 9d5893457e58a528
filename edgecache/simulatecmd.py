"""`edgecache simulate ACCESS_LOG... [--memory SIZES] [--disk SIZES] [--slice SIZE] [--plot FILE.svg]`: how the
node's own traffic would have fared with other memory and disk budgets (edgecache.simulate), to size what to buy.

The logs are read a line at a time as `edgecache usage` reads them (usagecmd.read_lines: plain or gzip, bounded
lines, malformed ones counted), in one pass for every budget pair, so memory holds the policies' state and never
the log. A progress bar goes to stderr when it is a terminal (or with --progress), redrawn only when its whole
percentage changes: at most 101 times, however long the log.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from edgecache import config as cfg
from edgecache import simulate, svgplot, usagecmd
from edgecache.config import CacheSettings
from edgecache.config.cache import SLICES, SLICES_PROBLEM
from edgecache.config.values import parse_size

MAX_SIZES = 16  # budgets per flag: every pair holds its policies' state for the whole replay
_GZIP = b"\x1f\x8b"
_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def size_list(text: str) -> tuple[int, ...]:
    """'256MiB,1GiB' -> the sizes in bytes, ascending, each once (argparse's type for --memory and --disk)."""
    values = set()
    for part in text.split(","):
        try:
            values.add(parse_size(part))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{part!r}: {exc}") from exc
    if len(values) > MAX_SIZES:
        raise argparse.ArgumentTypeError(f"at most {MAX_SIZES} sizes, got {len(values)}")
    return tuple(sorted(values))


def slice_size(text: str) -> int:
    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    # As cache.slice: a node slices no other way, and a slice of 1 byte made one 1 GiB line 2**30 slices to replay.
    if not SLICES[0] <= value <= SLICES[1]:
        raise argparse.ArgumentTypeError(f"a slice {SLICES_PROBLEM}, as cache.slice")
    return value


def size_label(n: int) -> str:
    """1073741824 -> '1GiB': the largest binary unit that divides it, else bytes."""
    for unit, factor in _UNITS:
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser(
        "simulate",
        help="replay access logs through the cache's policies at other memory and disk sizes (capacity planning)",
        description="Hit ratios and origin bytes the node's own traffic would have had with each memory and disk "
        "budget. Sizes and the slice default to the --config's cache.memory, cache.disk and cache.slice.",
    )
    s.add_argument("logs", nargs="+", type=Path, metavar="ACCESS_LOG", help="access log files, plain or .gz")
    s.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the node's config: its slice, budgets, memory policy and sites' keys",
    )
    s.add_argument(
        "--memory",
        type=size_list,
        metavar="SIZES",
        help="memory tier budgets (one worker's), e.g. 256MiB,1GiB (default: the config's, else 256MiB)",
    )
    s.add_argument(
        "--disk",
        type=size_list,
        metavar="SIZES",
        help="disk tier budgets, e.g. 256GiB,1TiB,2TiB (default: the config's, else 4GiB)",
    )
    s.add_argument("--slice", type=slice_size, metavar="SIZE", help="slice size (default: the config's, else 1MiB)")
    s.add_argument(
        "--memory-policy",
        choices=("s3fifo", "lru"),
        help="the memory tier's policy (default: the config's, else s3fifo)",
    )
    s.add_argument(
        "--disk-policy",
        choices=sorted(simulate.DISK_POLICIES),
        default=simulate.DEFAULT_DISK_POLICY,
        help=f"the disk tier's eviction (default: {simulate.DEFAULT_DISK_POLICY}, what the disk tier does now)",
    )
    s.add_argument("--plot", type=Path, metavar="FILE.svg", help="write byte hit ratio against disk size as SVG")
    s.add_argument("--progress", action="store_true", help="show progress on stderr even when it is not a terminal")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    """Raises ConfigError for a bad --config (the cli prints its problems)."""
    if args.plot is not None and args.plot.suffix.lower() != ".svg":
        print(
            "edgecache simulate: --plot writes SVG only (no PNG library is installed): name a .svg file",
            file=sys.stderr,
        )
        return 2
    config = cfg.load(args.config) if args.config is not None else None
    cache = config.cache if config is not None else CacheSettings(dir=Path())
    memories = args.memory or (cache.memory_bytes,)
    disks = args.disk or (cache.disk_bytes,)
    budgets = [simulate.Budget(m, d) for m in memories for d in disks]
    key_query = {site.name: site.key_query for site in config.sites} if config is not None else {}
    progress = Progress(sys.stderr) if args.progress or sys.stderr.isatty() else None
    try:
        lines = read(args.logs, progress)
        result = simulate.replay(
            lines,
            budgets,
            args.slice or cache.slice_bytes,
            simulate.memory_policy(args.memory_policy or cache.memory_policy),
            simulate.DISK_POLICIES[args.disk_policy],
            key_query,
        )
    except OSError as exc:  # a missing or unreadable file, a corrupt .gz
        print(f"edgecache simulate: {exc}", file=sys.stderr)
        return 1
    finally:
        if progress is not None:
            progress.close()
    sys.stdout.write(as_json(result) if args.json else render(result, args.slice or cache.slice_bytes))
    if args.plot is not None:
        try:
            args.plot.write_text(plot(result))
        except OSError as exc:
            print(f"edgecache simulate: cannot write the plot: {exc}", file=sys.stderr)
            return 1
    return 0


class Progress:
    """A bar on a terminal: redrawn when the whole percentage changes, so at most 101 times."""

    def __init__(self, out: TextIO, width: int = 40) -> None:
        self.out, self.width = out, width
        self.total = self.done = self.lines = 0
        self.shown = -1

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        self.lines += 1
        percent = min(100, self.done * 100 // self.total) if self.total else 100
        if percent != self.shown:
            self.shown = percent
            bar = "#" * (percent * self.width // 100)
            self.out.write(f"\r[{bar:<{self.width}}] {percent:3d}% {self.lines:,} lines")
            self.out.flush()

    def close(self) -> None:
        if self.shown >= 0:
            self.out.write("\n")
            self.out.flush()


def read(paths: Iterable[Path], progress: Progress | None) -> Iterator[bytes]:
    """The lines of every file in turn, with progress counted in (uncompressed) bytes."""
    paths = list(paths)
    if progress is not None:
        progress.total = sum(_length(p) for p in paths)
    for path in paths:
        for line in usagecmd.read_lines([path]):
            if progress is not None:
                progress.advance(len(line) + 1)
            yield line


def _length(path: Path) -> int:
    """A file's length, uncompressed: for gzip, the length its trailer records (modulo 4 GiB, so the bar of a
    larger file is an estimate; it stops at 100%)."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != _GZIP or f.seek(0, os.SEEK_END) < 18:
                return os.fstat(f.fileno()).st_size
            f.seek(-4, os.SEEK_END)
            return int.from_bytes(f.read(4), "little")
    except OSError as exc:
        raise OSError(f"{path}: {exc}") from exc


def render(result: simulate.Replay, slice_bytes: int) -> str:
    lines = result.lines
    counts = ", ".join(f"{lines[k]} {k.value}" for k in simulate.Kind)
    first = result.runs[0]
    out = [
        f"lines: {sum(lines.values())} ({counts})",
        f"served: {first.served_bytes} bytes in {first.requests} requests; slice {size_label(slice_bytes)}",
    ]
    header = ("memory", "disk", "request_hit", "byte_hit", "origin_bytes")
    rows = [header] + [
        (
            size_label(t.budget.memory),
            size_label(t.budget.disk),
            f"{t.request_hit_ratio:.4f}",
            f"{t.byte_hit_ratio:.4f}",
            str(t.origin_bytes),
        )
        for t in result.runs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    out += [
        "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in out) + "\n"


def as_json(result: simulate.Replay) -> str:
    runs = [
        {
            "memory_bytes": t.budget.memory,
            "disk_bytes": t.budget.disk,
            "requests": t.requests,
            "hits": t.hits,
            "served_bytes": t.served_bytes,
            "hit_bytes": t.hit_bytes,
            "origin_bytes": t.origin_bytes,
            "request_hit_ratio": round(t.request_hit_ratio, 6),
            "byte_hit_ratio": round(t.byte_hit_ratio, 6),
        }
        for t in result.runs
    ]
    doc = {"lines": {k.value: result.lines[k] for k in simulate.Kind}, "runs": runs}
    return json.dumps(doc, indent=2) + "\n"


def plot(result: simulate.Replay) -> str:
    """Byte hit ratio against disk size, one line per memory size."""
    by_memory: dict[int, list[tuple[float, float]]] = {}
    for t in result.runs:
        by_memory.setdefault(t.budget.memory, []).append((t.budget.disk, t.byte_hit_ratio))
    series = [svgplot.Series(f"memory {size_label(m)}", tuple(points)) for m, points in sorted(by_memory.items())]
    return svgplot.line_chart(
        "Byte hit ratio by disk size", ("disk tier budget", "byte hit ratio"), series, lambda x: size_label(int(x))
    )
