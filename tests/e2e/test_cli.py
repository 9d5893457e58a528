"""The command line: check-config like `nginx -t`, and `serve` as a real process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.e2e.procs import ROOT, edge_process, free_port
from tests.origin import Origin


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecache", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_shipped_config_is_valid() -> None:
    r = run_cli("check-config", str(ROOT / "config" / "edgecache.toml"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(": ok")


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        """
[server]
listen = ["nowhere"]
[cache]
memory = "lots"
slice = "1KiB"
colour = "blue"
[[sites]]
name = "a"
hosts = ["bad host!"]
origins = ["ftp://x"]
"""
    )
    r = run_cli("check-config", str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert f"{bad}: server.listen: expected HOST:PORT such as 127.0.0.1:8080" in lines
    assert f"{bad}: cache.memory: 'lots' is not a size such as 256MiB" in lines
    assert f"{bad}: cache.slice: must be between 4KiB and 64MiB" in lines
    assert f"{bad}: cache.colour: unknown key" in lines
    assert f"{bad}: sites[0].hosts: 'bad host!' is not a host name or *.wildcard" in lines
    assert f"{bad}: sites[0].origins: 'ftp://x' is not an http(s) URL with a host" in lines
    assert len(lines) == 6


def test_check_config_bad_toml(tmp_path: Path) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text("[server\n")
    r = run_cli("check-config", str(bad))
    assert r.returncode == 2
    assert r.stderr.startswith(f"{bad}: -: invalid TOML")


async def test_serve_one_origin_mode_as_a_process(origin: Origin, tmp_path: Path) -> None:
    origin.put("/p.bin", b"served by a real process" * 1000)
    port = free_port()
    args = ("serve", "--origin", origin.url, "--listen", f"127.0.0.1:{port}", "--cache-dir", str(tmp_path / "c"))
    async with edge_process(*args, ready={b"edgecache listening on": 1}), aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.get(f"http://127.0.0.1:{port}/p.bin", headers={"Host": "any.host"}) as r:
                assert r.status == 200
                assert await r.read() == b"served by a real process" * 1000
    assert origin.hits["/p.bin"] == 1


async def test_the_images_default_config_serves_the_demo_on_its_own(tmp_path: Path) -> None:
    """`docker run edgecache` with no arguments: the image's CMD names a config that needs no secret and serves
    the demo (the compose example's node1.toml needs the cluster key only compose makes: it exited 2)."""
    cmd = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    assert cmd == 'CMD ["serve", "--config", "/etc/edgecache/docker/single.toml"]'  # COPY config /etc/edgecache
    text = (ROOT / "config" / "docker" / "single.toml").read_text()
    port, admin, demo = free_port(), free_port(), free_port()
    for old, new in (
        ("0.0.0.0:8080", f"127.0.0.1:{port}"),
        ("0.0.0.0:9180", f"127.0.0.1:{admin}"),
        ("127.0.0.1:8090", f"127.0.0.1:{demo}"),
        ("/var/cache/edgecache", str(tmp_path)),
    ):
        assert old in text
        text = text.replace(old, new)
    config = tmp_path / "single.toml"
    config.write_text(text)
    ready = {b"edgecache listening on": 1, b"admin listening on": 1}
    async with edge_process("serve", "--config", str(config), ready=ready), aiohttp.ClientSession() as s:
        bodies = []
        for _ in range(2):
            url = f"http://127.0.0.1:{port}/video/demo.bin"
            async with s.get(url, headers={"Host": "localhost", "Range": "bytes=0-99"}) as r:
                assert r.status == 206
                bodies.append(await r.read())
        assert len(bodies[0]) == 100
        assert bodies[0] == bodies[1]
        async with s.get(f"http://127.0.0.1:{port}/", headers={"Host": "localhost"}) as r:
            assert r.status == 200
            assert b"<title>edgecache demo</title>" in await r.read()
        async with s.get(f"http://127.0.0.1:{admin}/healthz") as r:
            assert r.status == 200


def test_shipped_cluster_and_kubernetes_configs_are_valid(tmp_path: Path) -> None:
    # The cluster key file compose.yaml's cluster-key service makes and the Kubernetes Secret holds.
    key = tmp_path / "cluster.key"
    key.write_text("0123456789abcdef" * 4 + "\n")
    secret = "/etc/edgecache-secrets/cluster.key"
    for i in (1, 2, 3):
        r = run_cli("check-config", str(ROOT / "config" / "cluster" / f"node{i}.toml"))
        assert r.returncode == 0, r.stderr
        docker = tmp_path / f"docker{i}.toml"
        docker.write_text((ROOT / "config" / "docker" / f"node{i}.toml").read_text().replace(secret, str(key)))
        r = run_cli("check-config", str(docker))
        assert r.returncode == 0, r.stderr
    manifest = (ROOT / "config" / "kubernetes" / "edgecache.yaml").read_text()
    block = manifest.split("edgecache.toml: |\n", 1)[1].split("\n---", 1)[0]
    toml = "\n".join(line[4:] for line in block.splitlines()).replace(secret, str(key))
    toml = toml.replace("/etc/edgecache-tokens/operator.token", str(key))  # the admin token Secret's file
    path = tmp_path / "k8s.toml"
    path.write_text(toml)
    r = run_cli("check-config", str(path))
    assert r.returncode == 0, r.stderr


def test_ring_command_prints_the_owner_order() -> None:
    r = run_cli("ring", "http://localhost/video/demo.bin", "--config", str(ROOT / "config" / "cluster" / "node2.toml"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "http://localhost/video/demo.bin -> key 'demo|localhost|/video/demo.bin' (site demo)"
    assert [line.split()[1] for line in lines[1:]] == ["node1", "node3", "node2"]
    r = run_cli("ring", "http://unknown.example/x", "--config", str(ROOT / "config" / "cluster" / "node2.toml"))
    assert r.returncode == 1
    assert "no site is configured for host 'unknown.example'" in r.stderr


async def test_ring_command_of_the_readme_works_while_the_cluster_runs(tmp_path: Path) -> None:
    """README's cluster example starts the three nodes, then runs `edgecache ring URL --config node2.toml` with the
    token it exports: the shipped cluster configs had no admin token, so node2's admin listener refused every
    token (401) and ring said each node's health was "unknown" (this test failed there: 401, "unknown"). Without
    the token, ring still says why it cannot tell the health."""
    readme = (ROOT / "README.md").read_text()
    (token,) = [line.split("=", 1)[1] for line in readme.splitlines() if line.startswith("export EDGECACHE_TOKEN=")]
    text = (ROOT / "config" / "cluster" / "node2.toml").read_text()
    port, admin = free_port(), free_port()
    for old, new in (("127.0.0.1:8092", f"127.0.0.1:{port}"), ("127.0.0.1:9182", f"127.0.0.1:{admin}")):
        assert old in text
        text = text.replace(old, new)
    text = text.replace("../../var/cluster/node2", str(tmp_path))
    config = tmp_path / "node2.toml"
    config.write_text(text)
    ready = {b"edgecache listening on": 1, b"admin listening on": 1}
    env = {k: v for k, v in os.environ.items() if k != "EDGECACHE_TOKEN"}
    answers = []
    async with edge_process("serve", "--config", str(config), ready=ready):
        for given in ({"EDGECACHE_TOKEN": token}, {}):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edgecache", "ring", "http://localhost/video/demo.bin", "--config", str(config),
                cwd=ROOT, env={**env, **given}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err
            answers.append((out.decode().splitlines(), err.decode()))
    (lines, err), (unknown, refused) = answers
    assert lines[0] == "http://localhost/video/demo.bin -> key 'demo|localhost|/video/demo.bin' (site demo)"
    assert [line.split()[1] for line in lines[1:]] == ["node1", "node3", "node2"]
    assert lines[3].endswith(" up  (this node)")  # the live health: the peers' as this node's checks have it
    assert err == ""
    assert all(line.split()[-1] == "unknown" or line.endswith("unknown  (this node)") for line in unknown[1:])
    assert refused == (
        f"edgecache ring: 127.0.0.1:{admin} answered 401 (a bearer token is required): the owner order from the "
        "config, health unknown (--token or $EDGECACHE_TOKEN, of a token in [[admin.tokens]], for live health)\n"
    )


async def test_admin_commands_say_what_answered_when_it_is_not_the_admin_api(tmp_path: Path) -> None:
    """purge, ring and prefetch read the answer as JSON: another server at admin.listen (an answer of 200 or 502
    that is not JSON, as a proxy's error page) made each print a JSONDecodeError traceback; a URL file that is
    missing or not UTF-8 made `prefetch submit` print one too."""

    async def not_the_admin(request: web.Request) -> web.Response:
        status = 502 if request.method == "POST" else 200
        return web.Response(status=status, text="<html>Bad gateway</html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", not_the_admin)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        config = tmp_path / "edge.toml"
        config.write_text(
            f'[server]\nlisten = ["127.0.0.1:{free_port()}"]\n[cache]\ndir = "cache"\n'
            f'[admin]\nlisten = "127.0.0.1:{port}"\n[[sites]]\nname = "v"\nhosts = ["v.test"]\n'
            'origins = ["http://127.0.0.1:1"]\n'
        )
        (tmp_path / "urls.txt").write_text("http://v.test/a\n")
        (tmp_path / "latin1.txt").write_bytes(b"http://v.test/\xe9\n")
        calls = [
            ("purge", "http://v.test/a"),
            ("ring", "http://v.test/a"),
            ("prefetch", "list"),
            ("prefetch", "show", "abc"),
            ("prefetch", "submit", str(tmp_path / "urls.txt")),
        ]
        for call in calls:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edgecache", *call, "--config", str(config), "--token", "t" * 16,
                cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 1, (call, err)
            assert b"Traceback" not in err, (call, err)
            assert f"127.0.0.1:{port} answered".encode() in err, (call, err)
            assert b"not the admin API's JSON: '<html>Bad gateway</html>'" in err, (call, err)
        for name, reason in (("missing.txt", b"No such file or directory"), ("latin1.txt", b"not UTF-8 text")):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edgecache", "prefetch", "submit", str(tmp_path / name), "--config", str(config),
                cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            assert (proc.returncode, err) == (2, b"edgecache prefetch submit: " + str(tmp_path / name).encode()
                                              + b": " + reason + b"\n")  # fmt: skip
    finally:
        await runner.cleanup()


def test_check_config_refuses_origins_and_tokens_that_cannot_work(tmp_path: Path) -> None:
    """Each of these passed check-config: an origin with credentials (sent in the clear, written in the worker's
    log at every failure), a host with a space or a NUL in the URL (tried at every miss), a token of another type
    (a list became its repr) or with spaces around it (a presented token is stripped: it never matched)."""
    bad = tmp_path / "bad.toml"
    bad.write_text(
        """
[[admin.tokens]]
name = "ops"
role = "operator"
token = ["aaaaaaa", "bbbbbbb", "ccccccc"]
[[admin.tokens]]
name = "spaced"
role = "operator"
token = "  operator-secret-0123456789  "
[[sites]]
name = "a"
hosts = ["a.test"]
origins = ["http://user:s3cret@10.0.0.1:8080", "http://bad host:1", "http://10.0.0.1/\\u0000x", "http://o_1:8080"]
"""
    )
    r = run_cli("check-config", str(bad))
    assert r.returncode == 2, r.stdout
    assert "Traceback" not in r.stderr
    assert sorted(r.stderr.splitlines()) == [
        f"{bad}: admin.tokens[0].token: expected a string",
        f"{bad}: admin.tokens[1].token: must be printable, without spaces around it",
        f"{bad}: sites[0].origins: 'http://user:s3cret@10.0.0.1:8080': an origin URL has no user or password (they"
        " would be written in the logs)",
    ]
    for origin, problem in [
        ("http://bad host:1", "an origin URL has no spaces, controls or non-ASCII characters"),
        ("http://10.0.0.1/\\u0000x", "an origin URL has no spaces, controls or non-ASCII characters"),
        ("http://a.test\\\\@evil:1", "an origin URL has no user or password (they would be written in the logs)"),
        ("http://300.1.2.3:80", "'300.1.2.3' is not a host name or an IP address"),
    ]:
        bad.write_text(f'[[sites]]\nname = "a"\nhosts = ["a.test"]\norigins = ["{origin}"]\n')
        r = run_cli("check-config", str(bad))
        assert r.returncode == 2, (origin, r.stdout)
        assert r.stderr.startswith(f"{bad}: sites[0].origins: "), r.stderr
        assert problem in r.stderr, r.stderr
    bad.write_text('[[sites]]\nname = "a"\nhosts = ["a.test"]\norigins = ["http://o_1:8080/base", "http://[::1]:80"]\n')
    assert run_cli("check-config", str(bad)).returncode == 0


def test_check_config_refuses_a_cache_directory_the_node_cannot_use(tmp_path: Path) -> None:
    """A cache.dir that is a regular file (or under one) passed check-config, and the node then ran without its
    disk (its only disk out of service from the start: every object fetched from origin, nothing kept)."""
    (tmp_path / "afile").write_text("x\n")
    site = '[[sites]]\nname = "a"\nhosts = ["a.test"]\norigins = ["http://127.0.0.1:9"]\n'
    bad = tmp_path / "bad.toml"
    for cache, key, problem in [
        ('dir = "afile"\ndisk = "64MiB"', "cache.dir", f"{str(tmp_path / 'afile')!r} is not a directory"),
        ('dir = "afile/cache"', "cache.dir", f"{str(tmp_path / 'afile')!r} is not a directory"),
        (
            'disks = [{path = "ok", size = "64MiB"}, {path = "afile", size = "64MiB"}]',
            "cache.disks[1].path",
            f"{str(tmp_path / 'afile')!r} is not a directory",
        ),
    ]:
        bad.write_text(f"[cache]\n{cache}\n{site}")
        r = run_cli("check-config", str(bad))
        assert (r.returncode, r.stdout, r.stderr) == (2, "", f"{bad}: {key}: {problem}\n"), cache
    bad.write_text(f'[cache]\ndir = "not/yet"\ndisk = "64MiB"\n{site}')  # made by the node at its start
    assert run_cli("check-config", str(bad)).returncode == 0
    assert not (tmp_path / "not").exists()  # a check makes nothing


def test_budgets_over_the_machine_are_warned_of_by_check_config_not_by_the_admin_commands(tmp_path: Path) -> None:
    """check-config (and serve, before its start) warn of a disk budget over its filesystem; ring, purge and prefetch
    read the node's file on an operator's machine, whose disks are not the node's: they said the same (a warning
    about another machine), now nothing."""
    site = '[[sites]]\nname = "a"\nhosts = ["a.test"]\norigins = ["http://127.0.0.1:9"]\n'
    config = tmp_path / "node.toml"
    config.write_text(f'[cache]\ndir = "{tmp_path / "cache"}"\ndisk = "1000000TiB"\n{site}')
    r = run_cli("check-config", str(config))
    assert (r.returncode, r.stdout) == (0, f"{config}: ok\n")
    assert r.stderr.startswith(f"{config}: cache.disk: 1099511627776000000 bytes (1024000000.0 GiB) is more than the")
    r = run_cli("ring", "http://a.test/x", "--config", str(config))
    assert (r.returncode, r.stderr) == (0, "")


def test_check_config_refuses_an_access_log_the_node_cannot_open(tmp_path: Path) -> None:
    """An access log under a regular file passed check-config (`ok`), and `serve` with it then exited 1 at once
    ("log.access: cannot open ..."), as nginx -t would have said. One not there yet is made by the node: passed,
    and the check makes nothing."""
    (tmp_path / "afile").write_text("x\n")
    site = '[[sites]]\nname = "a"\nhosts = ["a.test"]\norigins = ["http://127.0.0.1:9"]\n'
    cache = f'[cache]\ndir = "{tmp_path / "cache"}"\ndisk = "64MiB"\n'
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[log]\naccess = "afile/access.log"\n{cache}{site}')
    r = run_cli("check-config", str(bad))
    assert (r.returncode, r.stdout, r.stderr) == (
        2,
        "",
        f"{bad}: log.access: {str(tmp_path / 'afile')!r} is not a directory\n",
    )
    for access in ("logs/access.log", "afile"):  # to be made at the start; a file that is there, appended to
        bad.write_text(f'[log]\naccess = "{access}"\n{cache}{site}')
        r = run_cli("check-config", str(bad))
        assert (r.returncode, r.stdout, r.stderr) == (0, f"{bad}: ok\n", ""), access
    assert not (tmp_path / "logs").exists()  # a check makes nothing
    assert (tmp_path / "afile").read_text() == "x\n"


def test_check_config_names_a_cache_directory_it_cannot_look_at_or_that_is_a_dangling_link(tmp_path: Path) -> None:
    """A cache.dir that is a link to nothing passed check-config (the node then failed to make it: File exists,
    its disk out of service from the start), and one whose name is longer than the file system takes ended
    check-config with a traceback (OSError: File name too long). A link to a directory is one the node uses."""
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere" / "cache")
    (tmp_path / "real").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    site = '[[sites]]\nname = "a"\nhosts = ["a.test"]\norigins = ["http://127.0.0.1:9"]\n'
    bad = tmp_path / "bad.toml"
    long = "x" * 300
    for path, problem in [
        ("gone", f"{str(tmp_path / 'gone')!r} is not a directory"),
        ("gone/sub", f"{str(tmp_path / 'gone')!r} is not a directory"),
        (long, f"cannot look at {str(tmp_path / long)!r}: File name too long"),
        (f"{long}/sub", f"cannot look at {str(tmp_path / long / 'sub')!r}: File name too long"),
    ]:
        bad.write_text(f'[cache]\ndir = "{path}"\ndisk = "64MiB"\n{site}')
        r = run_cli("check-config", str(bad))
        assert (r.returncode, r.stdout, r.stderr) == (2, "", f"{bad}: cache.dir: {problem}\n"), path
    for path in ("linked", "linked/not/yet"):
        bad.write_text(f'[cache]\ndir = "{path}"\ndisk = "64MiB"\n{site}')
        assert run_cli("check-config", str(bad)).returncode == 0, path
    assert list((tmp_path / "real").iterdir()) == []


@pytest.mark.parametrize("taken", ["server.listen", "admin.listen", "demo.origin"])
def test_serve_with_an_address_another_process_holds_says_which_and_exits_1(tmp_path: Path, taken: str) -> None:
    """The client listeners are bound by the parent, which stops at once when it cannot; the admin API's and the
    demo origin's were bound by worker 0 alone: it died on the taken port with a traceback, was started again and
    again (its client listener closed during each backoff), and the node never stopped nor served."""
    ports = {key: free_port() for key in ("server.listen", "admin.listen", "demo.origin")}
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{ports["server.listen"]}"]\nworkers = 1\n'
        f'[admin]\nlisten = "127.0.0.1:{ports["admin.listen"]}"\n'
        f'[demo]\norigin = "127.0.0.1:{ports["demo.origin"]}"\n'
        f'[cache]\ndir = "{tmp_path / "cache"}"\ndisk = "64MiB"\nmemory = "16MiB"\n'
        f'[[sites]]\nname = "demo"\nhosts = ["localhost"]\norigins = ["http://127.0.0.1:{ports["demo.origin"]}"]\n'
    )
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the port may hold TIME_WAITs (procs.free_port)
        holder.bind(("127.0.0.1", ports[taken]))
        holder.listen()
        r = run_cli("serve", "--config", str(config))
    assert r.returncode == 1, r.stderr
    assert f"cannot listen on 127.0.0.1:{ports[taken]}" in r.stderr
    assert "Address already in use" in r.stderr
    assert "Traceback" not in r.stderr
    assert "worker 0 started" not in r.stderr


def test_serve_with_an_access_log_it_cannot_open_says_which_and_exits_1(tmp_path: Path) -> None:
    """check-config said ok and worker 0 died at start with a FileNotFoundError/NotADirectoryError traceback, again
    and again (backing off to 16 s), while the node served nothing and never said which key was wrong."""
    (tmp_path / "afile").write_text("x\n")
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{free_port()}"]\n[admin]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[cache]\ndir = "{tmp_path / "cache"}"\n[log]\naccess = "afile/logs/access.log"\n'
        '[[sites]]\nname = "a"\nhosts = ["a.test"]\norigins = ["http://127.0.0.1:9"]\n'
    )
    r = run_cli("serve", "--config", str(config))
    assert r.returncode == 1, r.stderr
    path = tmp_path / "afile" / "logs" / "access.log"
    assert f"{config}: log.access: cannot open {path}: Not a directory" in r.stderr
    assert "Traceback" not in r.stderr
    assert "worker 0 started" not in r.stderr


def test_serve_refuses_one_origin_flags_it_would_ignore(tmp_path: Path) -> None:
    """`serve --config FILE --workers 3 --listen ... --memory 1GiB --admin ...` started one worker on the file's
    listener with the file's memory and no admin listener, saying nothing; `--origin URL --config FILE` ignored the
    file. The flags are one-origin mode's (several of their helps do not say so): each is refused, naming the key
    the file sets instead."""
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{free_port()}"]\n[cache]\ndir = "{tmp_path / "cache"}"\n'
        '[[sites]]\nname = "a"\nhosts = ["a.test"]\norigins = ["http://127.0.0.1:9"]\n'
    )
    r = run_cli("serve", "--config", str(config), "--workers", "3", "--memory", "1GiB", "--admin", "127.0.0.1:1")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (
        "command line: --memory, --admin, --workers: one-origin mode's (--origin); a config file sets "
        "cache.memory, admin.listen, server.workers\n"
    )
    r = run_cli("serve", "--origin", "http://127.0.0.1:9", "--config", str(config))
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == "command line: --config: give --origin (one-origin mode) or --config, not both\n"


@pytest.mark.parametrize("key", ["server.listen", "admin.listen"])
def test_serve_with_a_listen_name_that_does_not_resolve_says_which(tmp_path: Path, key: str) -> None:
    """The resolver's error alone ('Name or service not known') was the whole message: which listener?"""
    addrs = {"server.listen": f"127.0.0.1:{free_port()}", "admin.listen": f"127.0.0.1:{free_port()}"}
    addrs[key] = f"nowhere.invalid:{free_port()}"  # RFC 6761: never resolves
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[server]\nlisten = ["{addrs["server.listen"]}"]\n[admin]\nlisten = "{addrs["admin.listen"]}"\n'
        f'[cache]\ndir = "{tmp_path / "cache"}"\n'
        '[[sites]]\nname = "a"\nhosts = ["a.test"]\norigins = ["http://127.0.0.1:9"]\n'
    )
    r = run_cli("serve", "--config", str(config))
    assert r.returncode == 1, r.stderr
    assert f"cannot listen on {addrs[key]}: " in r.stderr
    assert "Traceback" not in r.stderr


def test_check_config_and_serve_refuse_exclusive_tiers_with_two_workers(tmp_path: Path) -> None:
    bad = tmp_path / "two.toml"
    bad.write_text(
        '[server]\nworkers = 2\n[cache]\ntiers = "exclusive"\n'
        '[[sites]]\nname = "v"\nhosts = ["video.test"]\norigins = ["http://127.0.0.1:9"]\n'
    )
    why = "'exclusive' needs one worker: a slice in one worker's memory only is a miss for the others"
    r = run_cli("check-config", str(bad))
    assert r.returncode == 2
    told = f"{bad}: cache.tiers: {why} (server.workers is 2; set 'inclusive' for several)"
    assert r.stderr.strip().splitlines() == [told]
    r = run_cli("serve", "--config", str(bad))
    assert r.returncode == 2
    assert told in r.stderr
    r = run_cli("serve", "--origin", "http://127.0.0.1:9", "--tiers", "exclusive", "--workers", "2")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"command line: --tiers: {why} (--workers is 2)"]
