"""Which entries of the temp dir are a node's runtime directories, decided from a name and an lstat result.

`edgecache serve` makes its runtime directories under the temp dir with tempfile.mkdtemp (mode 0700, eight random
characters after the prefix) and holds a lock on a file inside each for its life (edgecache.rundirs). One that a
node killed with SIGKILL left is removed by the next node to start: only a directory made as ours is (the exact
name shape, a real directory and not a symlink, this user's, mode 0700), and only once its lock can be taken.
"""

from __future__ import annotations

import re
import stat
from enum import StrEnum

LOCK = "edgecache.lock"  # held (shared) by the node's parent and workers while the directory is theirs
STAGED = "edgecache.lock.new"  # the lock file until it is locked: a sweep never sees it unlocked under LOCK


class Kind(StrEnum):
    """A kind of runtime directory, by its prefix."""

    PRIVATE = "edgecache-"  # worker 0's internal socket (supervisor._Workers.private, server._start_admin)
    METRICS = "edgecache-metrics-"  # prometheus-client multiprocess files, with more than one worker


# A Unix socket's path is at most 107 bytes (sockaddr_un.sun_path, less its NUL); the longest one bound in a PRIVATE
# directory is multiprocessing's fork server's "listener-" and 8 random characters (edgecache.forks).
SOCKET_PATH_BYTES = 107
_RANDOM = 8  # tempfile's characters after a prefix: mkdtemp's names, and mktemp's for that socket
_SOCKET_NAME_BYTES = len("listener-") + _RANDOM


def too_long_for_sockets(tempdir: bytes) -> str | None:
    """Why the Unix sockets a PRIVATE directory under `tempdir` holds could not be bound, if they could not."""
    longest = len(tempdir) + 1 + len(Kind.PRIVATE.value) + _RANDOM + 1 + _SOCKET_NAME_BYTES
    if longest <= SOCKET_PATH_BYTES:
        return None
    return (
        f"the temp dir {tempdir.decode(errors='replace')} is too long for the node's Unix sockets: their paths under "
        f"it take {longest} bytes, and Linux binds at most {SOCKET_PATH_BYTES}; set TMPDIR to a shorter directory "
        f"(at most {SOCKET_PATH_BYTES - longest + len(tempdir)} bytes)"
    )


_NAME = re.compile(rf"(edgecache-(?:metrics-)?)[a-z0-9_]{{{_RANDOM}}}")  # tempfile's characters: [a-z0-9_]


def kind_of(name: str) -> Kind | None:
    """The kind of runtime directory `name` is named as, if any."""
    match = _NAME.fullmatch(name)
    return Kind(match.group(1)) if match is not None else None


def sweepable(name: str, mode: int, owner: int, uid: int) -> Kind | None:
    """The kind, if an entry of the temp dir named `name`, with lstat's st_mode `mode` and st_uid `owner`, is made
    as a runtime directory of a node run by `uid`: the directory a sweep may remove once its lock can be taken."""
    kind = kind_of(name)
    if kind is None or owner != uid or not stat.S_ISDIR(mode) or stat.S_IMODE(mode) != 0o700:
        return None
    return kind
