"""Real edgecache processes for tests: started, awaited on their own log lines (never a sleep), stopped cleanly."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_lines(proc: asyncio.subprocess.Process, needles: dict[bytes, int]) -> None:
    """Until each needle has appeared in as many log lines as asked, in whatever order the processes wrote."""
    assert proc.stderr is not None
    left = dict(needles)
    while any(n > 0 for n in left.values()):
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line, "edgecache exited early"
        for needle in left:
            if needle in line:
                left[needle] -= 1


async def wait_listening(proc: asyncio.subprocess.Process, needle: bytes) -> None:
    await wait_lines(proc, {needle: 1})


@asynccontextmanager
async def edge_process(*args: str, ready: dict[bytes, int]) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m edgecache ARGS`, yielded once `ready` log lines appeared; SIGTERM at the end must exit 0."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgecache", *args, cwd=ROOT, stderr=asyncio.subprocess.PIPE
    )
    try:
        await wait_lines(proc, ready)
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 30)
    assert rc == 0
