"""Fuzz the pure parsers: no exception may escape them (issue 7). A benchmark-style run, not part of CI.

    nice -n 10 python -m loadtest.fuzz                      # 1,010,000 inputs over 12 targets, seed 1
    python -m loadtest.fuzz --inputs 100000 --seed 7        # fewer inputs, same proportions
    python -m loadtest.fuzz --target dash --inputs 20000    # one target

Each target (loadtest/fuzz_targets.py) draws seeded, structure-aware inputs (loadtest/fuzzgen.py: close to
valid, then mutated), calls the code in-process and checks the result. Only what a target documents may be
raised: `keys.BadTarget` from make_key/normalise_target (the reason for a 400), and `ConfigError` from config
loading, each of whose lines must be `file: key: problem`. Everything else is a finding, and so is a broken
documented property (a `Violation`: e.g. a range outside the representation, a cache key that changes when
normalised again, a non-ASCII date accepted as one) and an input that takes longer than --timeout seconds.
Every finding is shrunk to a small reproducer. Exit status 1 when there is any.

Default counts per target: ranges 150,000; cachecontrol 100,000; keys 120,000; variant (Vary, entry keys,
digests, PrimaryRecord) 60,000; httpdate 100,000; route 80,000; conditional 60,000; freshness 120,000;
hls 80,000; dash 40,000; config-toml (real files through config.load) 40,000; config-dict (config.build) 60,000;
heads 100,000.

The `e2e` target (loadtest/fuzz_e2e.py, its own options: `python -m loadtest.fuzz --target e2e --seconds 30`) runs
a real node in front of a real origin whose objects keep changing, and checks every answer against the versions
the origin served; see its docstring and loadtest/README.md.

The `heads` target (loadtest/fuzz_heads.py, issue 13) is differential and not in-process: each request head goes
over loopback to two real edges in a child process, one answering hits on its fast path and one with the fast
path off, and the statuses they give must be the same. `python -m loadtest.fuzz --target heads` (seed 1,
100,000 heads, 2-core machine shared with other jobs): 350 s of fuzzing (5 min 51 s wall), 286 heads/s, no
finding. The first run (6 min 9 s) found one: a Range line on a head over 8,190 bytes was answered 206 by the
fast path and 400 by aiohttp (aiohttp counts a long field name together with the next field's); fixed, with the
case in tests/e2e/test_fast_path_differential.py.
Before the fast path parsed heads with aiohttp's own parser, 27 of the first 2,000 heads differed (a repeated
User-Agent, Content-Type or Max-Forwards, 300 header lines: 200 or 206 from the fast path, 400 from aiohttp).

Figures for issue 7 (`nice -n 10 python -m loadtest.fuzz`, seed 1, 2-core machine shared with other jobs;
fuzzing 73.6 s, 1 min 39 s with shrinking and start-up):

    target           inputs  seconds  inputs/s  findings
    ranges          150,000      7.3    20,439         0
    cachecontrol    100,000      4.1    24,199         0
    keys            120,000      3.8    31,837         0
    variant          60,000      2.3    25,711         0
    httpdate        100,000      1.4    71,955         0
    route            80,000      0.7   120,819         0
    conditional      60,000      2.0    29,673         0
    freshness       120,000     13.1     9,185         0
    hls              80,000      3.0    26,664         0
    dash             40,000      7.8     5,127         0     (MAX_SEGMENTS lowered to 2,000 for the run)
    config-toml      40,000     23.3     1,717         9     (real files: write + config.load per input)
    config-dict      60,000      4.8    12,570         9
    total         1,010,000     73.6    13,726        18

Found and fixed in edgecache/core (regressions in tests/core/test_fuzz_regressions.py): parse_hls/parse_dash
raised ValueError on URIs such as '//[' and on non-integer attributes, UnicodeEncodeError on lone surrogates,
OverflowError/ValueError on huge durations, and MemoryError on a '$Number%0999999999d$' width; keys.digest
raised UnicodeEncodeError on surrogates outside U+DC80-U+DCFF; normalise_target let a trailing newline through
and was not idempotent ('/%%34%31' -> '/%41' -> '/A'); Range, Content-Range, HTTP-dates, hosts and
CDN-Cache-Control accepted Unicode digits, look-alike letters (U+017F for "s") or a trailing newline. The
remaining findings were in edgecache/config (since fixed): OverflowError for huge numbers in seconds,
positive numbers and sizes; RecursionError and ValueError (over 4,300 digits) from tomllib escaping load();
ValueError/UnicodeError reading a token_file; a token_file with a newline breaking the one-line problem format;
origin_host and key_query not checked for control or non-ASCII characters.
"""

from __future__ import annotations

import argparse
import resource
import signal
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from loadtest import fuzz_e2e, fuzz_targets
from loadtest.fuzz_targets import LAST, TARGETS, Args, Target, Violation
from loadtest.fuzzgen import G

Signature = tuple[str, str]


class Timeout(BaseException):
    """An input ran past --timeout (a BaseException, so no `except Exception` in the code under test eats it)."""


@dataclass
class Finding:
    signature: Signature
    args: Args
    message: str
    count: int = 0
    reproducer: str = ""


@dataclass
class Report:
    target: Target
    inputs: int = 0
    seconds: float = 0.0
    findings: dict[Signature, Finding] = field(default_factory=dict)


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Timeout


def signature(exc: BaseException) -> Signature:
    """One finding per kind of failure: a Violation's property, or an exception's type and where it was raised
    (the innermost edgecache line, so the same bug reached through other inputs counts once)."""
    if isinstance(exc, Violation):
        return ("Violation", exc.category)
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/edgecache/" in f.filename]
    frame = (ours or frames)[-1]
    where = frame.filename.split("/edgecache/", 1)[-1] if ours else frame.filename
    return (type(exc).__name__, f"edgecache/{where}:{frame.lineno}" if ours else f"{where}:{frame.lineno}")


def attempt(target: Target, args: Args, timeout: float) -> BaseException | None:
    """Run one input; the exception that escaped the check, if any."""
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        target.check(*args)
    except Timeout as exc:
        return exc
    except Exception as exc:
        return exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return None


def _message(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, Timeout):
        return f"no answer within {timeout:g}s"
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "..."


def run_target(target: Target, inputs: int, seed: int, timeout: float) -> Report:
    report = Report(target)
    g = G(seed * 1_000_003 + zlib.crc32(target.name.encode()))
    start = time.perf_counter()
    for _ in range(inputs):
        args = target.gen(g)
        exc = attempt(target, args, timeout)
        if exc is not None:
            sig = signature(exc)
            found = report.findings.get(sig)
            if found is None:
                found = report.findings[sig] = Finding(sig, args, _message(exc, timeout))
            elif found.count < 200 and len(repr(args)) < len(repr(found.args)):
                found.args, found.message = args, _message(exc, timeout)
            found.count += 1
    report.inputs = inputs
    report.seconds = time.perf_counter() - start
    return report


# --- shrinking ---------------------------------------------------------------------------------------------


class _Spent(Exception):
    pass


def _cuts(value: Any) -> Iterator[Any]:
    """The value without one chunk: halves first, then quarters, down to single characters."""
    n = len(value) // 2
    while n >= 1:
        for i in range(0, len(value), n):
            yield value[:i] + value[i + n :]
        n //= 2


def _smaller(value: Any) -> Iterator[Any]:
    """Candidates simpler than `value`, most aggressive first (the top-level argument tuple keeps its arity)."""
    if isinstance(value, str | bytes):
        yield from _cuts(value)
    elif isinstance(value, list | tuple | frozenset):
        items = list(value)
        for i in range(len(items)):
            yield type(value)(items[:i] + items[i + 1 :])
    elif isinstance(value, dict):
        for k in value:
            yield {key: v for key, v in value.items() if key != k}
    elif isinstance(value, int) and not isinstance(value, bool) and value not in (0, 1):
        yield from (0, 1, 10 ** (len(str(abs(value))) - 1), value // 2)


def _shrink_value(value: Any, fails: Callable[[Any], bool]) -> Any:
    """Greedy: take any simpler candidate that still fails, until none does; then shrink the parts."""
    progress = True
    while progress:
        progress = False
        for candidate in _smaller(value):
            if fails(candidate):
                value, progress = candidate, True
                break
    if isinstance(value, list | tuple):
        items, kind = list(value), type(value)
        for i in range(len(items)):

            def item_fails(c: Any, i: int = i) -> bool:
                return fails(kind([*items[:i], c, *items[i + 1 :]]))

            items[i] = _shrink_value(items[i], item_fails)
        value = kind(items)
    elif isinstance(value, dict):
        table = value
        for k in list(table):

            def entry_fails(c: Any, k: Any = k) -> bool:
                return fails({**table, k: c})

            table[k] = _shrink_value(table[k], entry_fails)
    return value


def shrink(target: Target, finding: Finding, timeout: float, seconds: float) -> None:
    """Shrink the finding's input within `seconds`, then record the exact call that fails as its reproducer."""
    deadline = time.perf_counter() + seconds

    def fails(candidate: Any) -> bool:
        if time.perf_counter() > deadline:
            raise _Spent
        exc = attempt(target, tuple(candidate), timeout)
        return exc is not None and signature(exc) == finding.signature

    args = list(finding.args)
    for i in range(len(args)):

        def arg_fails(c: Any, i: int = i) -> bool:
            return fails([*args[:i], c, *args[i + 1 :]])

        try:
            args[i] = _shrink_value(args[i], arg_fails)
        except _Spent:
            break
    finding.args = tuple(args)
    exc = attempt(target, finding.args, timeout)
    if exc is not None:
        finding.message = _message(exc, timeout)
    name, call_args = LAST[0]
    finding.reproducer = f"{name}({', '.join(repr(a) for a in call_args)})"


# --- driver ------------------------------------------------------------------------------------------------


def plan(inputs: int | None, only: str | None) -> list[tuple[Target, int]]:
    chosen = [t for t in TARGETS if only is None or t.name == only]
    if not chosen:
        raise SystemExit(f"no target {only!r}; choose from: {', '.join(t.name for t in TARGETS)}")
    if inputs is None:
        return [(t, t.default_inputs) for t in chosen]
    total = sum(t.default_inputs for t in chosen)
    return [(t, max(1, inputs * t.default_inputs // total)) for t in chosen]


def print_report(reports: list[Report], wall: float) -> int:
    print(f"\n{'target':<13}{'inputs':>10}{'seconds':>9}{'inputs/s':>10}{'findings':>10}  allowed to raise")
    for r in reports:
        rate = r.inputs / r.seconds if r.seconds else 0.0
        line = f"{r.target.name:<13}{r.inputs:>10,}{r.seconds:>9.1f}{rate:>10,.0f}{len(r.findings):>10}"
        print(f"{line}  {r.target.allowed}")
    total = sum(r.inputs for r in reports)
    found = [(r.target.name, f) for r in reports for f in r.findings.values()]
    print(f"{'total':<13}{total:>10,}{wall:>9.1f}{total / wall:>10,.0f}{len(found):>10}")
    for name, f in found:
        kind, where = f.signature
        print(f"\n[{name}] {kind} {where}  ({f.count:,} inputs)")
        shown = repr(f.args)
        print(f"  message:    {f.message}")
        print(f"  input:      {shown if len(shown) <= 600 else shown[:600] + '...'}")
        print(f"  reproducer: {f.reproducer}")
    return 1 if found else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--target" in args and args[args.index("--target") + 1 :][:1] == ["e2e"]:  # a node and an origin: own options
        at = args.index("--target")
        return fuzz_e2e.main(args[:at] + args[at + 2 :])
    parser = argparse.ArgumentParser(prog="python -m loadtest.fuzz", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--inputs", type=int, help="inputs in total, shared in the default proportions")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--target", help="only this target: " + ", ".join(t.name for t in TARGETS))
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds one input may take (default 10)")
    parser.add_argument("--shrink-seconds", type=float, default=5.0, help="per finding (default 5)")
    parser.add_argument("--memory", type=int, default=4096, help="address-space limit in MiB (default 4096)")
    opts = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = opts.memory * 2**20
    if hard == resource.RLIM_INFINITY or limit <= hard:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))  # a runaway allocation is a MemoryError finding
    signal.signal(signal.SIGALRM, _alarm)
    reports = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgecache-fuzz-") as tmp:
        fuzz_targets.prepare(Path(tmp))
        for target, n in plan(opts.inputs, opts.target):
            report = run_target(target, n, opts.seed, opts.timeout)
            rate = report.inputs / report.seconds if report.seconds else 0.0
            print(f"{target.name}: {report.inputs:,} inputs, {report.seconds:.1f}s, {rate:,.0f}/s, "
                  f"{len(report.findings)} findings", flush=True)  # fmt: skip
            reports.append(report)
        wall = time.perf_counter() - start
        for report in reports:
            for finding in report.findings.values():
                shrink(report.target, finding, opts.timeout, opts.shrink_seconds)
    return print_report(reports, wall)


if __name__ == "__main__":
    sys.exit(main())
