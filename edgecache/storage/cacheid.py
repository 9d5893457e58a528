"""A random name for this node's cache, made at its first start and kept on its first disk.

The same in every worker and after every restart, and another for every other cache: two standalone nodes whose
machines share a name and whose listeners match (containers started from one definition, each on its own volume)
tell their requests apart by it (proxy.origin.loop_token), so one may stand in front of the other.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger("edgecache.storage.disk")

FILE = "cache-id"


def cache_id(directory: Path) -> str:
    """The cache's name, made if it has none; "" when the directory takes no file (its disk out of service)."""
    path = directory / FILE
    name = _read(path)
    if name:
        return name
    tmp = directory / f".{FILE}.{os.getpid()}"
    try:
        tmp.write_text(secrets.token_hex(8))
        try:
            os.link(tmp, path)  # whole or not at all, and the first of two workers starting at once wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    except OSError as exc:
        log.warning("%s: no cache id kept: %s", directory, exc)
        return ""
    return _read(path)


def _read(path: Path) -> str:
    try:
        name = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return name if len(name) == 16 and all(c in "0123456789abcdef" for c in name) else ""
