"""`server.drain`: how long a stopping node (SIGTERM) lets requests in flight finish, on a real process whose
origin holds a response until the test lets it go. A worker ends its drain itself and exits 0: never by the
parent's kill, which comes drain + KILL_AFTER seconds after the stop."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from edgecache.config import build
from edgecache.errors import ConfigError
from tests.e2e.procs import descendants, edge_process, free_port, wait_lines
from tests.origin import Origin

CONFIG = """
[server]
listen = ["127.0.0.1:{port}"]
{drain}
[cache]
dir = "{cache}"
disk = "64MiB"
[[sites]]
name = "a"
hosts = ["a.test"]
origins = ["{origin}"]
"""
BODY = b"d" * 100_000


def write_config(path: Path, origin: Origin, port: int, drain: str) -> None:
    path.write_text(CONFIG.format(port=port, drain=drain, cache=path.parent / "c", origin=origin.url))


async def rest_of_log(proc: asyncio.subprocess.Process) -> bytes:
    """Every line the node writes from now until it exits, once it has exited with status 0.

    Awaited here, before edge_process ends: there a process whose exit asyncio has not yet noticed would be sent
    a SIGTERM, and Popen.send_signal's poll() would reap it first, leaving asyncio's watcher a status of 255."""
    assert proc.stderr is not None
    log = await asyncio.wait_for(proc.stderr.read(), 30)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    return log


async def held_request(origin: Origin, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A miss whose origin response is held (origin.gate) until the test sets the gate."""
    origin.put("/slow", BODY)
    origin.gate = asyncio.Event()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: a.test\r\n\r\n")
    await origin.wait_for_requests(1)
    return reader, writer


async def answered_then_stopped(
    proc: asyncio.subprocess.Process, origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[bytes, bytes]:
    """The held request let go (held_request): its whole 200 read, then the rest of the node's log as it stops."""
    assert origin.gate is not None
    origin.gate.set()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert await reader.readexactly(len(BODY)) == BODY
    log = await rest_of_log(proc)
    writer.close()
    return head, log


async def test_a_request_in_flight_finishes_within_the_drain_and_a_reload_keeps_the_running_drain(
    origin: Origin, tmp_path: Path
) -> None:
    port, path = free_port(), tmp_path / "edge.toml"
    write_config(path, origin, port, "drain = 30")
    async with edge_process("serve", "--config", str(path), ready={b"edgecache listening on": 1}) as proc:
        write_config(path, origin, port, "drain = 0")
        proc.send_signal(signal.SIGHUP)
        await wait_lines(proc, {b"reload: drain changed in": 1, b"reloaded": 1})
        reader, writer = await held_request(origin, port)
        proc.send_signal(signal.SIGTERM)
        await wait_lines(proc, {b"stopping: draining connections for up to 30 s": 1})
        head, log = await answered_then_stopped(proc, origin, reader, writer)
        assert b"\r\ncontent-length: 100000\r\n" in head.lower()
    assert b"worker 0 (pid " in log
    assert b"stopped: exited with status 0" in log
    assert b"killing it" not in log
    assert origin.hits["/slow"] == 1


async def test_a_sigterm_to_every_process_of_the_node_drains_as_one_to_the_parent(
    origin: Origin, tmp_path: Path
) -> None:
    """systemd's stop (KillMode=control-group) sends SIGTERM to every process of the unit at once. The fork server
    the workers are forked from outlives it (lifecycle.FORK_HELD): its end made the kernel kill them all, and the
    request in flight was cut (edgecache.forks: since, its end costs no worker either way)."""
    port, path = free_port(), tmp_path / "edge.toml"
    write_config(path, origin, port, "drain = 30")
    async with edge_process("serve", "--config", str(path), ready={b"edgecache listening on": 1}) as proc:
        reader, writer = await held_request(origin, port)
        for pid in (proc.pid, *descendants(proc.pid)):
            os.kill(pid, signal.SIGTERM)
        await wait_lines(proc, {b"stopping: draining connections for up to 30 s": 1})
        _, log = await answered_then_stopped(proc, origin, reader, writer)
    assert b"stopped: exited with status 0" in log
    assert b"killing it" not in log


@pytest.mark.parametrize("drain", ["0", "0.5"])
async def test_a_request_in_flight_past_the_drain_is_cut_and_the_worker_exits_by_itself(
    origin: Origin, tmp_path: Path, drain: str
) -> None:
    port, path = free_port(), tmp_path / "edge.toml"
    write_config(path, origin, port, f"drain = {drain}")
    async with edge_process("serve", "--config", str(path), ready={b"edgecache listening on": 1}) as proc:
        reader, writer = await held_request(origin, port)
        proc.send_signal(signal.SIGTERM)
        # The origin never answers: the client's connection is closed with no byte of a response (the gate is
        # set only when the origin fixture stops).
        assert await asyncio.wait_for(reader.read(), 30) == b""
        log = await rest_of_log(proc)
        writer.close()
    assert f"stopping: draining connections for up to {drain} s".encode() in log
    assert b"stopped: exited with status 0" in log
    assert b"killing it" not in log  # the worker stopped within its drain, not at the parent's deadline


def drain_of(server: dict[str, object]) -> float:
    return build({"server": server, "sites": [SITE]}, "f.toml", Path("/etc/edgecache")).drain


SITE = {"name": "v", "hosts": ["video.test"], "origins": ["http://10.0.0.1:8080"]}


def test_drain_defaults_to_ten_seconds_and_takes_zero_to_an_hour() -> None:
    assert drain_of({}) == 10.0
    assert drain_of({"drain": 0}) == 0.0
    assert drain_of({"drain": 2.5}) == 2.5
    assert drain_of({"drain": 3600}) == 3600.0


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (-1, "f.toml: server.drain: expected seconds (a finite number >= 0)"),
        (3601, "f.toml: server.drain: expected seconds between 0 and 3600"),
        ("10s", "f.toml: server.drain: expected seconds (a finite number >= 0)"),
        (True, "f.toml: server.drain: expected seconds (a finite number >= 0)"),
        (float("inf"), "f.toml: server.drain: expected seconds (a finite number >= 0)"),
    ],
)
def test_a_bad_drain_is_a_config_error_naming_file_and_key(value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        drain_of({"drain": value})
    assert exc.value.problems == [problem]


async def test_an_admin_request_whose_body_never_comes_does_not_hold_the_stop_past_the_drain(
    origin: Origin, tmp_path: Path
) -> None:
    """The admin listener stopped as aiohttp does by default: it waited up to 60 s for its handlers, here one
    reading a purge's body that never all comes, after the drain. The parent killed the worker at drain +
    KILL_AFTER, before the node's own end (its stores closed, its memory tier saved when asked)."""
    port, admin, path = free_port(), free_port(), tmp_path / "edge.toml"
    write_config(path, origin, port, "drain = 0.5")
    path.write_text(
        path.read_text()
        + f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
        + '[[admin.tokens]]\nname = "ops"\nrole = "operator"\ntoken = "operator-secret-0123456789"\n'
    )
    async with edge_process("serve", "--config", str(path), ready={b"admin listening on": 1}) as proc:
        reader, writer = await asyncio.open_connection("127.0.0.1", admin)
        writer.write(
            b"POST /purge HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer operator-secret-0123456789\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n["http://a.test/'
        )
        await writer.drain()
        proc.send_signal(signal.SIGTERM)
        await wait_lines(proc, {b"stopping: draining connections for up to 0.5 s": 1})
        log = await rest_of_log(proc)
        assert await asyncio.wait_for(reader.read(), 30) == b""  # cut with the stop, unanswered
        writer.close()
    assert b"stopped: exited with status 0" in log
    assert b"killing it" not in log


async def test_readyz_says_draining_while_a_request_in_flight_finishes(origin: Origin, tmp_path: Path) -> None:
    """A balancer takes the node out on /readyz's 503 while the drain lets what is in flight finish: the admin
    listener stays up through the drain (it stops after it, server.SIDE_STOP)."""
    port, admin, path = free_port(), free_port(), tmp_path / "edge.toml"
    write_config(path, origin, port, "drain = 30")
    path.write_text(path.read_text() + f'[admin]\nlisten = "127.0.0.1:{admin}"\n')
    async with edge_process("serve", "--config", str(path), ready={b"admin listening on": 1}) as proc:
        readyz = f"http://127.0.0.1:{admin}/readyz"
        async with aiohttp.ClientSession() as s:
            async with s.get(readyz) as r:
                assert (r.status, await r.text()) == (200, "ready\n")
            reader, writer = await held_request(origin, port)
            proc.send_signal(signal.SIGTERM)
            await wait_lines(proc, {b"stopping: draining connections for up to 30 s": 1})
            async with s.get(readyz) as r:
                assert (r.status, await r.text()) == (503, "draining\n")
        _, log = await answered_then_stopped(proc, origin, reader, writer)
    assert b"stopped: exited with status 0" in log
    assert b"killing it" not in log
