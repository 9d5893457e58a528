"""SIGHUP reloads the config without dropping connections; a bad config is refused and the old one kept."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp

from tests.e2e.procs import edge_process, free_port, wait_lines, wait_listening, workers_below
from tests.origin import Origin

CONFIG = """
[server]
listen = ["127.0.0.1:{port}"]
[cache]
dir = "{cache}"
disk = "64MiB"
{sites}
"""
SITE = '[[sites]]\nname = "{name}"\nhosts = ["{host}"]\norigins = ["{origin}"]\n'


async def request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> tuple[int, bytes]:
    """One request on a kept-alive connection (the same socket across the reload)."""
    writer.write(f"GET /r HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[1])
    return int(head.split(b" ")[1]), await reader.readexactly(length)


async def test_sighup_reload(origin: Origin, tmp_path: Path) -> None:
    origin.put("/r", b"reloaded")
    port = free_port()
    path = tmp_path / "edge.toml"
    a = SITE.format(name="a", host="a.test", origin=origin.url)
    b = SITE.format(name="b", host="b.test", origin=origin.url)
    path.write_text(CONFIG.format(port=port, cache=tmp_path / "c", sites=a))
    async with edge_process("serve", "--config", str(path), ready={b"edgecache listening on": 1}) as proc:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await request(reader, writer, "a.test") == (200, b"reloaded")
        assert (await request(reader, writer, "b.test"))[0] == 421
        path.write_text(CONFIG.format(port=port, cache=tmp_path / "c", sites=a + b))
        proc.send_signal(signal.SIGHUP)
        await wait_listening(proc, b"reloaded")
        assert await request(reader, writer, "b.test") == (200, b"reloaded")  # same connection, new site
        path.write_text(CONFIG.format(port=port, cache=tmp_path / "c", sites=a + b) + "\n[cache]\nslice = 'x'\n")
        proc.send_signal(signal.SIGHUP)
        await wait_listening(proc, b"reload rejected, keeping the running config")
        assert await request(reader, writer, "b.test") == (200, b"reloaded")
        writer.close()


async def test_sigterm_drains_in_flight_requests(origin: Origin, tmp_path: Path) -> None:
    origin.put("/slow", b"s" * 100_000)
    origin.gate = asyncio.Event()
    port = free_port()
    path = tmp_path / "edge.toml"
    path.write_text(
        CONFIG.format(port=port, cache=tmp_path / "c", sites=SITE.format(name="a", host="a.test", origin=origin.url))
    )
    async with edge_process("serve", "--config", str(path), ready={b"edgecache listening on": 1}) as proc:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: a.test\r\n\r\n")
        await origin.wait_for_requests(1)  # the request is in flight, held at the origin
        proc.send_signal(signal.SIGTERM)
        await wait_listening(proc, b"stopping: draining")
        origin.gate.set()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(100_000) == b"s" * 100_000
        writer.close()


async def test_a_reload_applies_the_rate_limit_and_names_what_only_a_restart_changes(
    origin: Origin, tmp_path: Path
) -> None:
    # A reload that set rate_limit was neither applied by the running worker nor reported, while a worker the parent
    # started later applied it; header_timeout (read once by the fast path) changed nothing and said nothing either.
    origin.put("/r", b"reloaded")
    port = free_port()
    path = tmp_path / "edge.toml"
    site = SITE.format(name="a", host="a.test", origin=origin.url)
    path.write_text(CONFIG.format(port=port, cache=tmp_path / "c", sites=site))
    async with edge_process("serve", "--config", str(path), ready={b"edgecache listening on": 1}) as proc:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert [(await request(reader, writer, "a.test"))[0] for _ in range(3)] == [200, 200, 200]
        limited = CONFIG.replace("[cache]", "rate_limit = 0.001\nburst = 2\nheader_timeout = 5\n[cache]")
        path.write_text(limited.format(port=port, cache=tmp_path / "c", sites=site))
        proc.send_signal(signal.SIGHUP)
        await wait_lines(proc, {b"reload: header_timeout changed in": 1, b"reloaded": 1})
        assert [(await request(reader, writer, "a.test"))[0] for _ in range(3)] == [200, 200, 429]
        path.write_text(CONFIG.format(port=port, cache=tmp_path / "c", sites=site))
        proc.send_signal(signal.SIGHUP)
        await wait_lines(proc, {b"reloaded": 1})
        assert [(await request(reader, writer, "a.test"))[0] for _ in range(3)] == [200, 200, 200]
        writer.close()


async def test_a_reload_back_to_the_running_config_names_no_change(origin: Origin, tmp_path: Path) -> None:
    # A reload kept the whole new config as the running one, restart-only fields too: after a reload that changed
    # header_timeout (not applied: "takes effect at the next restart"), putting the file back as it runs was
    # reported as "header_timeout changed", though the file now said what the node ran.
    port = free_port()
    path = tmp_path / "edge.toml"
    site = SITE.format(name="a", host="a.test", origin=origin.url)
    path.write_text(CONFIG.format(port=port, cache=tmp_path / "c", sites=site))
    async with edge_process("serve", "--config", str(path), ready={b"edgecache listening on": 1}) as proc:
        changed = CONFIG.replace("[cache]", "header_timeout = 5\n[cache]")
        path.write_text(changed.format(port=port, cache=tmp_path / "c", sites=site))
        proc.send_signal(signal.SIGHUP)
        await wait_lines(proc, {b"reload: header_timeout changed in": 1, b"reloaded": 1})
        path.write_text(CONFIG.format(port=port, cache=tmp_path / "c", sites=site))
        proc.send_signal(signal.SIGHUP)
        assert proc.stderr is not None
        lines = []
        while not lines or b"reloaded" not in lines[-1]:
            lines.append(await asyncio.wait_for(proc.stderr.readline(), 30))
        assert [line for line in lines if b"changed in" in line] == []


def _worker(parent: int) -> int:
    """The one worker (the fork server's child, or the parent's once a fork server died)."""
    [worker] = workers_below(parent)
    return worker


async def _until(proc: asyncio.subprocess.Process, *needles: bytes) -> bytes:
    """The first log line holding any of `needles`."""
    assert proc.stderr is not None
    while True:
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line, "edgecache exited early"
        if any(n in line for n in needles):
            return line


async def _admin_status(port: int, token: str) -> int:
    async with aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{port}/ring?url=http://a.test/r"
        async with s.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status


async def test_reloads_apply_in_the_order_they_were_asked_for(origin: Origin, tmp_path: Path) -> None:
    # Each SIGHUP started a reload of its own at once, and the one whose file took longer to load (a token file on a
    # slow mount; here a FIFO nobody had written yet) applied the config it had read after a later reload had
    # applied the file as it now is: the node went on running the old file (its rotated-away token let in, the
    # file's own refused) until the next reload.
    port, admin = free_port(), free_port()
    path, fifo = tmp_path / "edge.toml", tmp_path / "token.fifo"
    os.mkfifo(fifo)
    site = SITE.format(name="a", host="a.test", origin=origin.url)
    tokens = f'[admin]\nlisten = "127.0.0.1:{admin}"\n[[admin.tokens]]\nname = "ops"\nrole = "operator"\n{{token}}\n'

    def write(token: str) -> None:
        path.write_text(
            CONFIG.replace("[cache]", tokens + "[cache]").format(
                port=port, cache=tmp_path / "c", sites=site, token=token
            )
        )

    write('token = "first-token-0123456789"')
    async with edge_process("serve", "--config", str(path), ready={b"admin listening on": 1}) as proc:
        worker = _worker(proc.pid)  # signalled itself: the parent reads the file too, and would take the FIFO's
        write(f'token_file = "{fifo}"')
        os.kill(worker, signal.SIGHUP)
        writer = await asyncio.to_thread(open, fifo, "w")  # returns once the worker's reload reads it
        with writer:
            write('token = "third-token-0123456789"')
            os.kill(worker, signal.SIGHUP)
            first = await _until(proc, b"reloaded", b"reload waits")
            writer.write("second-token-0123456789\n")
        if b"reload waits" in first:
            await _until(proc, b"reloaded")
        await _until(proc, b"reloaded")
        assert await _admin_status(admin, "third-token-0123456789") == 200
        assert await _admin_status(admin, "second-token-0123456789") == 401


async def test_a_config_read_that_never_returns_stalls_no_supervision(origin: Origin, tmp_path: Path) -> None:
    # The parent read the file on its own loop: a config on a FIFO nobody writes (or a stalled mount) stopped it
    # reaping and replacing workers until the read returned. Now the read runs in a thread: a killed worker is
    # replaced meanwhile, the read is given up after server.reload_timeout with a message naming the file, and a
    # later reload of a good file applies, in the workers and in the parent (for the workers it starts). The
    # timeout is 2 s here, not the default 10 s the test waited out before.
    origin.put("/r", b"reloaded")
    port = free_port()
    path, fifo = tmp_path / "edge.toml", tmp_path / "edge.fifo"
    a = SITE.format(name="a", host="a.test", origin=origin.url)
    b = SITE.format(name="b", host="b.test", origin=origin.url)
    config = CONFIG.replace("[server]\n", "[server]\nreload_timeout = 2\n")
    path.write_text(config.format(port=port, cache=tmp_path / "c", sites=a))
    async with edge_process("serve", "--config", str(path), ready={b"edgecache listening on": 1}) as proc:
        os.mkfifo(fifo)
        fifo.replace(path)
        proc.send_signal(signal.SIGHUP)
        os.kill(_worker(proc.pid), signal.SIGKILL)
        died = await _until(proc, b"died", b"did not end within")
        assert b"killed by SIGKILL; restarting in 0 s" in died  # reaped while the read is stalled
        started = await _until(proc, b"started: pid", b"did not end within")
        assert b"worker 0 started: pid " in started  # and replaced: the parent started its successor meanwhile
        # The successor's own start (an import of the code, 2-5 s on a loaded machine) may end after the timeout.
        lines = [await _until(proc, b"listening on", b"did not end within") for _ in range(2)]
        assert any(b"edgecache listening on" in line for line in lines), lines
        [stalled] = [line for line in lines if b"did not end within" in line]
        assert b"main ERROR" in stalled
        assert f"reload rejected, keeping the running config: {path}: reading it did not end within".encode() in stalled
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await request(reader, writer, "a.test") == (200, b"reloaded")
        assert (await request(reader, writer, "b.test"))[0] == 421
        writer.close()
        staged = tmp_path / "staged.toml"
        staged.write_text(config.format(port=port, cache=tmp_path / "c", sites=a + b))
        staged.replace(path)
        proc.send_signal(signal.SIGHUP)
        await wait_lines(proc, {b"reloaded": 1, b"the workers started from now on serve it": 1})
        os.kill(_worker(proc.pid), signal.SIGKILL)  # its successor serves what the parent read
        await wait_lines(proc, {b"died": 1, b"listening on": 1})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await request(reader, writer, "b.test") == (200, b"reloaded")
        writer.close()


def series(line: str) -> str:
    """A sample line of the text format without its value."""
    return line.rpartition(" ")[0]


async def test_a_reload_takes_the_metric_series_of_the_sites_it_removed_out_of_metrics(
    origin: Origin, tmp_path: Path
) -> None:
    # A site a reload removed kept its series (requests, served bytes, origin requests, misses, share waits) in
    # /metrics until the next restart; the series of the sites that stay, and of requests of no site, are kept.
    origin.put("/r", b"reloaded")
    port, admin = free_port(), free_port()
    path = tmp_path / "edge.toml"
    a = SITE.format(name="a", host="a.test", origin=origin.url)
    b = SITE.format(name="gone", host="b.test", origin=origin.url)
    with_admin = CONFIG.replace("[cache]", "workers = 2\n[cache]") + f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
    path.write_text(with_admin.format(port=port, cache=tmp_path / "c", sites=a + b))
    ready = {b"edgecache listening on": 2, b"admin listening on": 1}
    async with edge_process("serve", "--config", str(path), ready=ready) as proc, aiohttp.ClientSession() as s:
        for host in ("a.test", "b.test", "c.test"):
            async with s.get(f"http://127.0.0.1:{port}/r", headers={"Host": host}) as r:
                await r.read()
        async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
            before = await r.text()
        assert 'edgecache_requests_total{cache_status="miss",method="GET",site="gone",status_class="2xx"} 1.0' in before
        assert 'edgecache_requests_total{cache_status="miss",method="GET",site="a",status_class="2xx"} 1.0' in before
        assert 'edgecache_requests_total{cache_status="error",method="GET",site="-",status_class="4xx"} 1.0' in before
        path.write_text(with_admin.format(port=port, cache=tmp_path / "c", sites=a))
        proc.send_signal(signal.SIGHUP)
        await wait_lines(proc, {b"reloaded": 2})
        async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
            after = await r.text()
        assert 'site="gone"' not in after
        kept = {series(line) for line in before.splitlines() if 'site="' in line and 'site="gone"' not in line}
        assert {series(line) for line in after.splitlines() if 'site="' in line} == kept
