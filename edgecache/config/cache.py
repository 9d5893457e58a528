"""The [cache] table: the memory tier, the slice size and the disk tier (one directory, or cache.disks)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgecache.config.model import PURGED_RECORDS, CacheSettings, Disk
from edgecache.config.schema import KEYS
from edgecache.config.values import _positive, _Reader, parse_size, seconds_between

SLICES = (4096, 64 * 2**20)  # the sizes a slice may have (cache.slice, and `edgecache simulate --slice`)
SLICES_PROBLEM = "must be between 4KiB and 64MiB"
TIERS = ("inclusive", "exclusive")
MAX_SAVE = 3600.0  # cache.save_on_stop at most, as server.drain
MIN_LEASE = 2.0  # cache.lease at least (_lease_seconds)
# Each worker has a memory tier of its own over the one disk: a slice only in one worker's memory is a miss for the
# others, which fetch it again (loadtest.tier_layouts --workers: a loss from 2 workers on).
EXCLUSIVE_WORKERS = "'exclusive' needs one worker: a slice in one worker's memory only is a miss for the others"


def check_tiers(r: _Reader, settings: CacheSettings, workers: int, keys: str = "cache.tiers") -> None:
    """cache.tiers = "exclusive" with several workers: refused, naming both keys."""
    if settings.tiers == "exclusive" and workers > 1:
        r.problem(keys, f"{EXCLUSIVE_WORKERS} (server.workers is {workers}; set 'inclusive' for several)")


def read_cache(r: _Reader, doc: dict[str, Any], base: Path) -> CacheSettings:
    t = r.table(doc, "cache")
    r.unknown(t, "cache.", KEYS["cache"])
    directory = r.get(t, "cache.", "dir", _directory(base), base / "var/cache")
    disk_bytes = r.get(t, "cache.", "disk", parse_size, 4 * 2**30)
    disks = _disks(r, t, base) if "disks" in t else ()
    if disks:
        directory, disk_bytes = disks[0].path, sum(d.size for d in disks)
    settings = CacheSettings(
        dir=directory,
        memory_bytes=r.get(t, "cache.", "memory", parse_size, 256 * 2**20),
        disk_bytes=disk_bytes,
        slice_bytes=r.get(t, "cache.", "slice", parse_size, 2**20),
        fill_slices=r.get(t, "cache.", "fill_slices", _positive(int), 4),
        memory_policy=r.get(t, "cache.", "memory_policy", str, "s3fifo"),
        memory_headroom=r.get(t, "cache.", "memory_headroom", parse_size, 64 * 2**20),
        fill_memory=r.get(t, "cache.", "fill_memory", parse_size, 0),
        disks=disks,
        tiers=r.get(t, "cache.", "tiers", str, "inclusive"),
        save_on_stop=r.get(t, "cache.", "save_on_stop", _save_seconds, 10.0),
        max_object_size=r.get(t, "cache.", "max_object_size", object_size, 0),
        lease=r.get(t, "cache.", "lease", _lease_seconds, 10.0),
        stats_interval=r.get(t, "cache.", "stats_interval", _stats_seconds, 5.0),
        purged_records=r.get(t, "cache.", "purged_records", _purged_records, PURGED_RECORDS),
    )
    run = settings.slice_bytes * settings.fill_slices
    if settings.fill_bytes < run:
        r.problem("cache.fill_memory", f"must hold at least one run of slices (fill_slices x slice = {run} bytes)")
    if not SLICES[0] <= settings.slice_bytes <= SLICES[1]:
        r.problem("cache.slice", SLICES_PROBLEM)
    if settings.tiers not in TIERS:
        r.problem("cache.tiers", "must be 'inclusive' or 'exclusive'")
    if settings.memory_policy not in ("s3fifo", "lru"):
        r.problem("cache.memory_policy", "must be 's3fifo' or 'lru'")
    for i, d in enumerate(settings.all_disks):
        if d.size < settings.slice_bytes * 16:
            r.problem(f"cache.disks[{i}].size" if disks else "cache.disk", "must hold at least 16 slices")
    return settings


def object_size(v: Any) -> int:
    """cache.max_object_size, a site's sites.cache.max_object_size: a size of at least one byte."""
    size = parse_size(v)
    if size == 0:
        raise ValueError("must be at least 1 byte (to store objects of any size, give the disk budget)")
    return size


def check_object_sizes(r: _Reader, settings: CacheSettings, limits: list[tuple[str, int | None]]) -> None:
    """cache.max_object_size and each site's (`limits`: key, value or None) against the disk budget: an object
    over it could never be stored, and one near it would evict everything else."""
    budget = settings.disk_bytes
    for key, size in [("cache.max_object_size", settings.max_object_size or None), *limits]:
        if size is not None and size > budget:
            where = "cache.disks" if settings.disks else "cache.disk"
            r.problem(key, f"{size} bytes is more than the disk budget ({where}: {budget} bytes)")


# cache.save_on_stop is bounded as server.drain is: a stop waits for both, and what waits on the stop (systemd's
# TimeoutStopSec) must wait longer than drain + save_on_stop + supervisor.KILL_AFTER.
_save_seconds = seconds_between(0, MAX_SAVE)
# cache.lease: at least MIN_LEASE, so that a whole copy's holder, which renews its lease at most once a second as its
# bytes come (proxy.revalidating.held_on), keeps it between two renewals.
_lease_seconds = seconds_between(MIN_LEASE, MAX_SAVE)
# cache.purged_records at most: about 26 GB of each disk's database, outside its budget, a thousand times the default.
MAX_PURGED_RECORDS = 100_000_000


def _purged_records(v: Any) -> int:
    """Zero would keep no record (each purge's dropped as it is written); a bound no disk reaches would be none. Never
    a float: TOML tells 100000.0 from 100000, and a record is kept or not."""
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_PURGED_RECORDS:
        raise ValueError(
            f"expected a whole number of records between 1 and {MAX_PURGED_RECORDS:,} (each about 260 bytes of every "
            "disk's database, outside its budget)"
        )
    return v


# cache.stats_interval: each sample asks the disk tier its size (off the loop), so not more than twice a second.
_stats_seconds = seconds_between(0.5, MAX_SAVE)


_DISKS_FORM = 'an array of tables such as [{path = "/srv/cache1", size = "900GiB"}, ...]'


def _disks(r: _Reader, t: dict[str, Any], base: Path) -> tuple[Disk, ...]:
    """cache.disks: every directory its own (never the same one twice, never one inside another)."""
    raw = t["disks"]
    for single in ("dir", "disk"):
        if single in t:
            r.problem(f"cache.{single}", "give cache.disks, or cache.dir and cache.disk (one disk), not both")
    disks: list[Disk] = []
    entries = r.tables(
        raw,
        "cache.disks",
        KEYS["cache.disks"],
        f"expected {_DISKS_FORM}",
        entry="expected a table {path = ..., size = ...}",
        required=("path", "size"),
        nonempty=True,
    )
    for _, p, entry in entries:
        path = r.get(entry, p, "path", _directory(base), None)
        size = r.get(entry, p, "size", parse_size, None)
        if path is None:
            continue
        for j, other in enumerate(disks):
            if path == other.path:
                r.problem(f"{p}path", f"{str(path)!r} is also cache.disks[{j}]: give each disk once")
            elif path.is_relative_to(other.path) or other.path.is_relative_to(path):
                r.problem(f"{p}path", f"{str(path)!r} and cache.disks[{j}] ({str(other.path)!r}) are nested")
        disks.append(Disk(path, size if size is not None else -1))
    # Only a list read whole is used (and its sizes checked): a problem above already fails the file.
    whole = isinstance(raw, list) and len(disks) == len(raw)
    return tuple(disks) if whole and all(d.size >= 0 for d in disks) else ()


def _directory(base: Path) -> Callable[[Any], Path]:
    def convert(v: Any) -> Path:
        if not isinstance(v, str) or not v.strip():
            raise ValueError("expected a directory path")
        if "\x00" in v:
            raise ValueError(f"{v!r} holds a NUL character: expected a directory path")
        path = Path(os.path.normpath(v))
        return path if path.is_absolute() else Path(os.path.normpath(base / path))

    return convert
