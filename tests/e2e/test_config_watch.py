"""server.watch_config on a real process: a config file mounted as Kubernetes mounts a ConfigMap (the file is a
symlink through `..data`, which the kubelet points at a new directory in one rename) is reloaded when it changes,
without a signal or a restart; a broken one is refused, said why, and the running config kept."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.e2e.procs import edge_process, free_port, wait_lines
from tests.origin import Origin

CONFIG = """
[server]
listen = ["127.0.0.1:{port}"]
workers = 2
watch_config = 1
[cache]
dir = "{cache}"
disk = "64MiB"
{sites}
"""
SITE = '[[sites]]\nname = "{name}"\nhosts = ["{host}"]\norigins = ["{origin}"]\n'


def publish(mount: Path, version: int, text: str) -> None:
    """What the kubelet does for a ConfigMap update: the files in a new directory, then `..data` swapped to it."""
    new = mount / f"..2026_12_02_0{version}"
    new.mkdir()
    (new / "edgecache.toml").write_text(text)
    (mount / "..data_tmp").symlink_to(new.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    if not (mount / "edgecache.toml").is_symlink():
        (mount / "edgecache.toml").symlink_to("..data/edgecache.toml")


async def status(port: int, host: str) -> tuple[int, bytes]:
    """One request on a connection of its own (each may reach either worker)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /w HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def test_a_swapped_configmap_is_reloaded_and_a_broken_one_refused(origin: Origin, tmp_path: Path) -> None:
    origin.put("/w", b"watched")
    port = free_port()
    mount = tmp_path / "configmap"
    mount.mkdir()
    a = SITE.format(name="a", host="a.test", origin=origin.url)
    b = SITE.format(name="b", host="b.test", origin=origin.url)
    publish(mount, 1, CONFIG.format(port=port, cache=tmp_path / "c", sites=a))
    config = str(mount / "edgecache.toml")
    async with edge_process("serve", "--config", config, ready={b"edgecache listening on": 2}) as proc:
        for _ in range(4):
            assert await status(port, "a.test") == (200, b"watched")
            assert (await status(port, "b.test"))[0] == 421
        publish(mount, 2, CONFIG.format(port=port, cache=tmp_path / "c", sites=a + b))
        await wait_lines(proc, {b"changed (now " + str(mount / "..2026_12_02_02").encode(): 1, b"reloaded ": 2})
        for _ in range(4):  # both workers serve the new site, on the same listeners
            assert await status(port, "b.test") == (200, b"watched")
            assert await status(port, "a.test") == (200, b"watched")
        broken = CONFIG.format(port=port, cache=tmp_path / "c", sites=a + b) + "\n[cache]\nslice = 'x'\n"
        publish(mount, 3, broken)
        refused = f"reload rejected, keeping the running config: {config}: -: invalid TOML".encode()
        await wait_lines(proc, {refused: 2})
        for _ in range(4):
            assert await status(port, "b.test") == (200, b"watched")
        publish(mount, 4, CONFIG.format(port=port, cache=tmp_path / "c", sites=b))
        await wait_lines(proc, {b"reloaded ": 2})
        for _ in range(4):
            assert (await status(port, "a.test"))[0] == 421
            assert await status(port, "b.test") == (200, b"watched")
    assert origin.hits["/w"] == 2  # once for each site's key
