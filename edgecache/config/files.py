"""The files a config names and the node reads at check time: secret files and TLS certificate pairs, and the cache
directories check-config looks at (unusable_disks). A relative path is relative to the config file's directory
(`base`)."""

from __future__ import annotations

import contextlib
import os
import ssl
from pathlib import Path
from typing import Any

from edgecache.config.certcheck import load_pair, warnings
from edgecache.config.model import Config, Disk, TLSFiles
from edgecache.config.schema import KEYS
from edgecache.config.values import _Reader


def read_secret_file(r: _Reader, key: str, value: Any, base: Path) -> str | None:
    """The text of the secret file `value` names (cluster key_file, admin token_file, sites.signing secret_file);
    None once the problem is reported under `key`."""
    path = Path(str(value))
    path = path if path.is_absolute() else base / path
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path, a file that is not UTF-8
        reason = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
        r.problem(key, f"cannot read {str(path)!r}: {reason}")
        return None


def read_tls(r: _Reader, t: dict[str, Any], p: str, base: Path, hosts: tuple[str, ...] = ()) -> TLSFiles | None:
    """The `tls` table of `t` ([server.tls] or a site's), its pair loaded once here so a bad one fails the check;
    one that clients refuse (expired, or naming none of a host of `hosts`, its site's) is warned of."""
    raw = t.get("tls")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        r.problem(f"{p}tls", "expected a table with cert and key")
        return None
    r.unknown(raw, f"{p}tls.", KEYS["tls"])
    paths = []
    for name in ("cert", "key"):
        value = raw.get(name)
        if not isinstance(value, str) or not value:
            r.problem(f"{p}tls.{name}", "expected the path of a PEM file")
            return None
        path = Path(value)
        paths.append(path if path.is_absolute() else base / path)
    files = TLSFiles(paths[0], paths[1])
    try:
        load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), files)
    except (OSError, ssl.SSLError) as exc:
        r.problem(*_pair_problem(p, files, exc))
        return None
    for warning in warnings(files, hosts):
        r.warn(f"{p}tls", warning)
    return files


def _pair_problem(p: str, files: TLSFiles, exc: OSError | ssl.SSLError) -> tuple[str, str]:
    """The key and problem of a pair that did not load: a file that cannot be read is named by its own key (OpenSSL's
    error names neither), else the pair, with OpenSSL's reason."""
    for name, path in (("cert", files.cert), ("key", files.key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            return f"{p}tls.{name}", f"cannot read {str(path)!r}: {err.strerror}"
    return f"{p}tls", f"cannot load certificate {files.cert} with key {files.key}: {exc}"


def unusable_disks(config: Config) -> list[str]:
    """check-config's word on each cache directory, without making any: one the node could not make or write in
    (a regular file, a path under one, a directory it may not write in, a read-only file system). A node serves
    without such a disk (taken out of service at start, every object fetched from origin, nothing kept): no
    reason to refuse a reload or a start, but a file that says so must not pass the check."""
    problems = []
    for i, disk in enumerate(config.cache.all_disks):
        key = f"cache.disks[{i}].path" if config.cache.disks else "cache.dir"
        problem = _unusable(disk.path)
        if problem is not None:
            problems.append(f"{config.source}: {key}: {problem}")
    return problems


def unusable_log(config: Config) -> list[str]:
    """check-config's word on the access log, without making it: one the node could not open (a directory it could
    not make, a file it may not write) stops the node at its start (supervisor), so a file naming it must not pass."""
    path = config.access_log
    if path is None:
        return []
    if os.path.lexists(path):
        problem = None if os.access(path, os.W_OK) else f"cannot write to {str(path)!r}: no write permission"
    else:
        problem = _unusable(path.parent)
    return [] if problem is None else [f"{config.source}: log.access: {problem}"]


def _nearest(path: Path) -> tuple[Path, OSError | None]:
    """The nearest of `path` and its parents that is there (a link too, to nothing or not): the node makes the rest.
    With an error: the one it cannot look at (a name too long, a directory it may not look in)."""
    there = path
    while there.parent != there:
        try:
            os.lstat(there)
            break
        except (FileNotFoundError, NotADirectoryError):
            there = there.parent
        except OSError as exc:
            return there, exc
    return there, None


def _unusable(path: Path) -> str | None:
    there, error = _nearest(path)
    if error is not None:  # nothing the node could make
        return f"cannot look at {str(there)!r}: {error.strerror}"
    if not there.is_dir():  # a link to nothing too: the node cannot make a directory where it is
        return f"{str(there)!r} is not a directory"
    if not os.access(there, os.W_OK | os.X_OK):
        return f"cannot write in {str(there)!r}: no write permission or a read-only file system"
    return None


def over_machine(config: Config, one_origin: bool = False) -> None:
    """Warn of budgets this machine cannot hold (disks_over_filesystems, memory_over_machine), naming the keys of a
    file or one-origin mode's flags: check-config's, and serve's before its start. Not at every read of a config:
    edgecache ring, purge and prefetch read the node's file on an operator's machine, whose disks and memory are
    not the node's, and a reload changes no budget (cache sizes take effect at a restart)."""
    r = _Reader(config.source)
    cache = config.cache
    several = [f"cache.disks[{i}].size" for i in range(len(cache.disks))]
    disks_over_filesystems(r, cache.all_disks, ["--disk"] if one_origin else several or ["cache.disk"])
    key = "--memory" if one_origin else "cache.memory"
    memory_over_machine(r, cache.memory_bytes, cache.memory_headroom, config.workers, key)


def disks_over_filesystems(r: _Reader, disks: tuple[Disk, ...], keys: list[str]) -> None:
    """Warn (check-config, a start: over_machine) of disk budgets (each named by its key in `keys`) that add up to more
    than the filesystem holding them holds (statvfs: its whole size, not what is free). The node runs, but the
    budget never bounds it: the filesystem fills first, each write that meets the full filesystem is lost, and the
    budget is lowered to what the disk holds then (storage.disks). A path that cannot be looked at is
    unusable_disks' to tell."""
    held: dict[int, tuple[int, list[tuple[str, Disk]]]] = {}  # by device: the filesystem's size, its disks
    for key, disk in zip(keys, disks, strict=True):
        there, error = _nearest(disk.path)
        try:
            if error is not None:
                raise error
            fs, device = os.statvfs(there), os.stat(there).st_dev
        except OSError:
            continue
        held.setdefault(device, (fs.f_blocks * fs.f_frsize, []))[1].append((key, disk))
    for total, on in held.values():
        budget = sum(disk.size for _, disk in on)
        if budget > total:
            paths = ", ".join(repr(str(disk.path)) for _, disk in on)
            r.warn(
                " + ".join(key for key, _ in on),
                f"{_bytes(budget)} is more than the whole filesystem holding {paths}: {_bytes(total)} (statvfs);"
                " it fills up before the budget is reached",
            )


# Where the kernel says how much memory the node's cgroup may take (v2, then v1): a container's limit, below the RAM.
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def memory_over_machine(r: _Reader, memory: int, headroom: int, workers: int, key: str) -> None:
    """Warn (check-config, a start: over_machine) when the workers' memory tiers and their headroom (what the RSS bound
    lets each worker hold: rssbound) add up to more than the memory this machine, or the cgroup the node runs in,
    has: the kernel's OOM killer stops workers before the tier's budget bounds them."""
    room = memory_room()
    need = workers * (memory + headroom)
    if room is not None and need > room:
        r.warn(
            key,
            f"{workers} worker(s) x (memory {memory} + headroom {headroom}) = {_bytes(need)} is more than this"
            f" machine's or its cgroup's memory: {_bytes(room)}; workers are killed before the tier is full",
        )


def memory_room() -> int | None:
    """The least of the machine's RAM and its cgroup's limits, in bytes (None: none could be read)."""
    found = []
    with contextlib.suppress(ValueError, OSError):
        found.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    for path in _CGROUP_LIMITS:
        with contextlib.suppress(OSError, ValueError):  # "max": no limit (ValueError)
            found.append(int(path.read_text().strip()))
    return min(found, default=None)


def _bytes(n: int) -> str:
    return f"{n} bytes ({n / 2**30:.1f} GiB)"
