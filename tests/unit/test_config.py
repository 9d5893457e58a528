"""Config validation: every problem named by file, key and what is wrong."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.config import build, files, one_origin, parse_size
from edgecache.errors import ConfigError

SITE = {"name": "v", "hosts": ["video.test"], "origins": ["http://10.0.0.1:8080"]}


def problems(doc: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        build(doc, "f.toml", Path("/etc/edgecache"))
    return exc.value.problems


def test_sizes() -> None:
    assert parse_size("1MiB") == 2**20
    assert parse_size("1MB") == 10**6
    assert parse_size("4k") == 4096
    assert parse_size(12) == 12
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_site_acl_and_tokens() -> None:
    cfg = build({"sites": [{**SITE, "allow": ["10.0.0.0/8", "2001:db8::/32"]}]}, "f.toml", Path("/x"))
    assert cfg.sites[0].allows("10.1.2.3")
    assert cfg.sites[0].allows("2001:db8::1")
    assert not cfg.sites[0].allows("192.168.1.1")
    assert not cfg.sites[0].allows("not-an-ip")
    assert problems({"sites": [{**SITE, "allow": ["10.0.0.0/33"]}]}) == [
        "f.toml: sites[0].allow: '10.0.0.0/33' is not a subnet"
    ]
    # Every client address is matched in its IPv4 form (a dual-stack hop's ::ffff:a.b.c.d too): a mapped subnet
    # would match none, and refuse every client the operator meant to let in.
    mapped = {"server": {"trusted_forwarders": ["::ffff:10.0.0.1"]}, "sites": [{**SITE, "allow": ["::ffff:a00:0/104"]}]}
    assert problems(mapped) == [
        "f.toml: server.trusted_forwarders: '::ffff:10.0.0.1' is an IPv4-mapped subnet, which no client address is"
        " matched against (an IPv4 client is matched as IPv4): write '10.0.0.1/32'",
        "f.toml: sites[0].allow: '::ffff:a00:0/104' is an IPv4-mapped subnet, which no client address is matched"
        " against (an IPv4 client is matched as IPv4): write '10.0.0.0/8'",
    ]
    bad_tokens = {
        "sites": [SITE],
        "admin": {"tokens": [{"name": "p", "token": "short", "sites": ["nope"]}, {"name": "q", "role": "x"}]},
    }
    assert problems(bad_tokens) == [
        "f.toml: admin.tokens[0].token: must be at least 16 characters",
        "f.toml: admin.tokens[1].token: give exactly one of token and token_file",
        "f.toml: admin.tokens[1].role: must be 'operator' or 'provider'",
        "f.toml: admin.tokens[0].sites: 'nope' is not a configured site",
    ]


def test_a_subnet_written_with_host_bits_set_is_warned_of_naming_file_key_and_what_it_is_read_as(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """'10.0.0.5/8' meant for one balancer trusts every address of 10.0.0.0/8 (nginx warns of it too): a warning,
    as the config that has it works, naming what it is read as; a network or a bare address is not warned of."""
    doc = {
        "server": {
            "trusted_forwarders": ["10.0.0.5/8", "10.0.0.5"],
            "proxy_protocol": ["127.0.0.1:8080"],
            "proxy_protocol_from": ["192.168.1.0/24"],
        },
        "sites": [{**SITE, "allow": ["2001:db8::1/32", "10.0.0.0/8", "172.16.5.4/255.255.0.0"]}],
    }
    with caplog.at_level(logging.WARNING, logger="edgecache.config"):
        cfg = build(doc, "f.toml", Path("/x"))
    assert [str(n) for n in cfg.trusted_forwarders] == ["10.0.0.0/8", "10.0.0.5/32"]
    assert [r.getMessage() for r in caplog.records] == [
        "f.toml: server.trusted_forwarders: '10.0.0.5/8' has host bits set: it is read as 10.0.0.0/8, every address"
        " in it",
        "f.toml: sites[0].allow: '2001:db8::1/32' has host bits set: it is read as 2001:db8::/32, every address in it",
        "f.toml: sites[0].allow: '172.16.5.4/255.255.0.0' has host bits set: it is read as 172.16.0.0/16, every"
        " address in it",
    ]


def test_a_disk_budget_over_its_filesystem_is_warned_of_naming_the_key_and_both_sizes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A budget the filesystem holding the disk cannot hold (statvfs total) never bounds the cache: the filesystem
    fills first. check-config said `ok` and nothing else; now it warns (as serve does before its start: over_machine),
    naming the key, the budget and the filesystem's size; disks that share a filesystem are added up. A budget
    the filesystem holds, or one that is not there yet but whose parent is, is judged where the node makes it.
    Reading the file warns of nothing: ring, purge and prefetch read it on an operator's machine."""
    monkeypatch.setattr(files, "memory_room", lambda: None)  # this test's machine's memory is not in question
    fs = os.statvfs(tmp_path)
    total = fs.f_blocks * fs.f_frsize
    gib = f"{total / 2**30:.1f} GiB"
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "not" / "yet"
    doc = {"cache": {"dir": str(c), "disk": total + 1}, "sites": [SITE]}
    two = {"cache": {"disks": [{"path": str(a), "size": total // 2 + 1}, {"path": str(b), "size": total // 2 + 1}]}}
    with caplog.at_level(logging.WARNING, logger="edgecache.config"):
        configs = [build(d, "f.toml", tmp_path) for d in (doc, {**two, "sites": [SITE]})]
        configs.append(build({"cache": {"dir": str(c), "disk": total}, "sites": [SITE]}, "f.toml", tmp_path))
        assert caplog.records == []
        for config in configs:
            files.over_machine(config)
        files.over_machine(one_origin("http://o.test", "127.0.0.1:8080", str(c), disk_bytes=2 * total), one_origin=True)
    both = 2 * (total // 2 + 1)
    assert [r.getMessage() for r in caplog.records] == [
        f"f.toml: cache.disk: {total + 1} bytes ({(total + 1) / 2**30:.1f} GiB) is more than the whole filesystem"
        f" holding {str(c)!r}: {total} bytes ({gib}) (statvfs); it fills up before the budget is reached",
        f"f.toml: cache.disks[0].size + cache.disks[1].size: {both} bytes ({both / 2**30:.1f} GiB) is more than the"
        f" whole filesystem holding {str(a)!r}, {str(b)!r}: {total} bytes ({gib}) (statvfs); it fills up before the"
        " budget is reached",
        f"command line: --disk: {2 * total} bytes ({2 * total / 2**30:.1f} GiB) is more than the whole filesystem"
        f" holding {str(c)!r}: {total} bytes ({gib}) (statvfs); it fills up before the budget is reached",
    ]


def test_memory_budgets_over_the_machines_memory_are_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`memory = "99999TiB"` passed check-config with `ok`: the RSS bound (memory + headroom) then never bounds a
    worker, and the OOM killer does. Warned of when the workers' tiers and headroom add up to more than the least of
    the RAM and the cgroup's limits (v2's "max" is no limit)."""
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    v2.write_text("max\n")
    v1.write_text("3000000000\n")
    monkeypatch.setattr(files, "_CGROUP_LIMITS", (v2, v1))
    assert files.memory_room() == min(3_000_000_000, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    monkeypatch.setattr(files, "memory_room", lambda: 2**30)
    cache = {"dir": str(tmp_path / "c"), "disk": "64MiB"}
    with caplog.at_level(logging.WARNING, logger="edgecache.config"):
        files.over_machine(build({"cache": {**cache, "memory": "448MiB"}, "sites": [SITE]}, "f.toml", tmp_path))
        doc = {"cache": {**cache, "memory": "960MiB"}, "server": {"workers": 2}, "sites": [SITE]}
        files.over_machine(build(doc, "f.toml", tmp_path))
        for workers in (3, 4):  # 960 MiB, then 1280 MiB
            one = one_origin("http://o.test", "127.0.0.1:8080", str(tmp_path / "c"), memory_bytes=2**28)
            files.over_machine(replace(one, workers=workers), one_origin=True)
    assert [r.getMessage() for r in caplog.records] == [
        "f.toml: cache.memory: 2 worker(s) x (memory 1006632960 + headroom 67108864) = 2147483648 bytes (2.0 GiB) is"
        " more than this machine's or its cgroup's memory: 1073741824 bytes (1.0 GiB); workers are killed before the"
        " tier is full",
        "command line: --memory: 4 worker(s) x (memory 268435456 + headroom 67108864) = 1342177280 bytes (1.2 GiB)"
        " is more than this machine's or its cgroup's memory: 1073741824 bytes (1.0 GiB); workers are killed before"
        " the tier is full",
    ]


def test_cluster_problems() -> None:
    doc = {
        "sites": [SITE],
        "cluster": {
            "self": "n9",
            "key": "k" * 32,
            "nodes": [{"id": "n1", "address": "127.0.0.1:1"}, {"id": "n1", "address": "x"}],
        },
    }
    assert problems(doc) == [
        "f.toml: cluster.nodes[1].address: expected HOST:PORT such as 127.0.0.1:8080",
        "f.toml: cluster.nodes: node ids must be unique",
        "f.toml: cluster.self: 'n9' is not one of the nodes",
    ]


def test_fuzz_findings_are_config_errors_naming_file_and_key(tmp_path: Path) -> None:
    """Found by loadtest/fuzz.py: each used to escape as another exception, or to be accepted."""
    assert problems({"origin": {"connect_timeout": 10**400}, "sites": [SITE]}) == [
        "f.toml: origin.connect_timeout: int too large to convert to float"
    ]
    assert problems({"origin": {"read_timeout": float("inf")}, "sites": [SITE]}) == [
        "f.toml: origin.read_timeout: must be positive and finite"
    ]
    assert problems({"cache": {"disk": "9" * 310}, "sites": [SITE]})[0].startswith("f.toml: cache.disk: ")
    assert problems({"sites": [{**SITE, "origin_host": "\u212aelvin.test"}]}) == [
        "f.toml: sites[0].origin_host: '\u212aelvin.test' is not a host name or *.wildcard"
    ]
    assert problems({"sites": [{**SITE, "key_query": ["a\x00"]}]}) == [
        "f.toml: sites[0].key_query: expected a query parameter name or '*'"
    ]
    assert problems({"": 1, "sites": [SITE]}) == ["f.toml: '': unknown key"]
    path = str(tmp_path / "a\x00b")
    found = problems({"admin": {"tokens": [{"name": "ops", "token_file": path}]}, "sites": [SITE]})
    assert f"f.toml: admin.tokens[0].token_file: cannot read {path!r}: ValueError" in found


def test_toml_that_python_cannot_parse_is_a_config_error(tmp_path: Path) -> None:
    from edgecache.config import load

    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 1000 + "]" * 1000 + "\n")
    long_int = tmp_path / "long.toml"
    long_int.write_text("a = " + "9" * 5000 + "\n")
    for path in (deep, long_int):
        with pytest.raises(ConfigError) as info:
            load(path)
        assert info.value.problems[0].startswith(f"{path}: -: invalid TOML: ")


def test_memory_headroom_is_a_size_and_zero_turns_the_bound_off() -> None:
    base: dict[str, object] = {"sites": [SITE]}
    assert build(base, "f.toml", Path("/etc/edgecache")).cache.memory_headroom == 64 * 2**20
    off = build({**base, "cache": {"memory_headroom": 0}}, "f.toml", Path("/etc/edgecache"))
    assert off.cache.memory_headroom == 0
    wide = build({**base, "cache": {"memory_headroom": "1GiB"}}, "f.toml", Path("/etc/edgecache"))
    assert wide.cache.memory_headroom == 2**30
    # what a worker's memos of decisions hold together: a quarter of it (of its default when off), 4 MiB at least
    narrow = build({**base, "cache": {"memory_headroom": "8MiB"}}, "f.toml", Path("/etc/edgecache"))
    assert [c.cache.memo_bytes for c in (off, narrow, wide)] == [32 * 2**20, 4 * 2**20, 2**29]
    assert build(base, "f.toml", Path("/etc/edgecache")).cache.memo_bytes == 32 * 2**20
    assert any(
        p.startswith("f.toml: cache.memory_headroom:") for p in problems({**base, "cache": {"memory_headroom": "lots"}})
    )


def test_fill_memory_defaults_to_half_the_memory_tier_and_four_runs_at_least() -> None:
    base: dict[str, object] = {"sites": [SITE]}
    etc = Path("/etc/edgecache")
    assert build(base, "f.toml", etc).cache.fill_bytes == 128 * 2**20
    assert build({**base, "cache": {"memory": "2MiB"}}, "f.toml", etc).cache.fill_bytes == 16 * 2**20  # four runs
    assert build({**base, "cache": {"memory": "1GiB", "fill_memory": "96MiB"}}, "f.toml", etc).cache.fill_bytes == (
        96 * 2**20
    )
    assert problems({**base, "cache": {"fill_memory": "1MiB"}}) == [
        "f.toml: cache.fill_memory: must hold at least one run of slices (fill_slices x slice = 4194304 bytes)"
    ]


def test_forward_fields_are_field_names_the_cache_does_not_own() -> None:
    cfg = build({"sites": [{**SITE, "forward_fields": ["X-Trace", "traceparent"]}]}, "f.toml", Path("/x"))
    assert cfg.sites[0].forward_fields == ("x-trace", "traceparent")
    assert problems({"sites": [{**SITE, "forward_fields": ["Host", "bad field", 3]}]}) == [
        "f.toml: sites[0].forward_fields: 'Host' is set by the cache or would change what the origin answers: "
        "never forwarded"
    ]
    for name in ("Range", "Cookie", "Authorization", "X-Forwarded-Host", "Connection", "X-Forwarded-For"):
        assert "never forwarded" in problems({"sites": [{**SITE, "forward_fields": [name]}]})[0]
    assert problems({"sites": [{**SITE, "forward_fields": ["a b"]}]}) == [
        "f.toml: sites[0].forward_fields: 'a b' is not a header field name"
    ]
    # Proxies and CGI servers read an underscore as a dash: X_Real_IP would reach an origin's app as X-Real-IP.
    assert problems({"sites": [{**SITE, "forward_fields": ["X-Trace", "X_Real_IP"]}]}) == [
        "f.toml: sites[0].forward_fields: 'X_Real_IP' has an underscore, which proxies and CGI servers read as a "
        "dash (a client could spoof the dashed field): never forwarded"
    ]


def test_an_origin_url_with_a_port_that_is_not_one_is_refused() -> None:
    """Such a URL used to pass check-config and turn every request of the site into a 502."""
    for url in ("http://127.0.0.1:99999", "http://127.0.0.1:abc", "http://127.0.0.1:0"):
        assert problems({"sites": [{**SITE, "origins": ["http://10.0.0.1:8080", url]}]}) == [
            f"f.toml: sites[0].origins: {url!r}: port must be 1-65535"
        ]
    cfg = build({"sites": [{**SITE, "origins": ["https://o.test:443/base/", "http://o.test"]}]}, "f.toml", Path("/x"))
    assert cfg.sites[0].origins == ("https://o.test:443/base", "http://o.test")


def test_cache_dir_is_a_directory_path() -> None:
    """A NUL in cache.dir used to pass check-config and end each worker in a ValueError traceback."""
    assert problems({"cache": {"dir": "/srv/a\x00b"}, "sites": [SITE]}) == [
        "f.toml: cache.dir: '/srv/a\\x00b' holds a NUL character: expected a directory path"
    ]
    assert problems({"cache": {"dir": ""}, "sites": [SITE]}) == ["f.toml: cache.dir: expected a directory path"]
    base = Path("/etc/edgecache")
    assert build({"sites": [SITE]}, "f.toml", base).cache.dir == base / "var/cache"
    assert build({"cache": {"dir": "c/../d/"}, "sites": [SITE]}, "f.toml", base).cache.dir == base / "d"
    assert build({"cache": {"dir": "/srv/c"}, "sites": [SITE]}, "f.toml", base).cache.dir == Path("/srv/c")


def test_a_listen_host_is_an_ip_address_or_a_host_name() -> None:
    """300.0.0.1 used to pass check-config, and each worker then died in a socket.gaierror traceback."""
    assert problems({"admin": {"listen": "300.0.0.1:9180"}, "sites": [SITE]}) == [
        "f.toml: admin.listen: '300.0.0.1:9180': '300.0.0.1' is not an IP address or a host name"
    ]
    listen = ["999.1.1.1:80", "no such host:80", "127.1:80", "-edge:80", "edge.:80", "a..b:80", "x" * 64 + ":80"]
    found = problems({"server": {"listen": listen}, "sites": [SITE]})
    assert len(found) == 1  # a list is refused at its first bad entry
    assert found[0] == "f.toml: server.listen: '999.1.1.1:80': '999.1.1.1' is not an IP address or a host name"
    for addr in listen[1:]:
        host = addr.rsplit(":", 1)[0]
        assert problems({"server": {"listen": [addr]}, "sites": [SITE]}) == [
            f"f.toml: server.listen: {addr!r}: {host!r} is not an IP address or a host name"
        ]
    brackets = {
        "[127.0.0.1]:80": "only an IPv6 address is written in brackets",
        "[edge]:80": "only an IPv6 address is written in brackets",
        "[]:80": "only an IPv6 address is written in brackets",
        "[::1:80": "an IPv6 address is written in brackets, as [::1]:8080",
        "::1:80": "an IPv6 address is written in brackets, as [::1]:8080",
    }
    for addr, problem in brackets.items():
        assert problems({"server": {"listen": [addr]}, "sites": [SITE]}) == [
            f"f.toml: server.listen: {addr!r}: {problem}"
        ]
    good = ["0.0.0.0:8080", "[::]:8081", "[::1]:8082", "localhost:8083", "edge-1.example.test:8084", "edge_2:8086"]
    good.append("[fe80::1%eth0]:8087")
    cfg = build({"server": {"listen": [*good, ":8085"]}, "sites": [SITE]}, "f.toml", Path("/x"))
    assert [str(a) for a in cfg.listen] == [*good, "0.0.0.0:8085"]  # edge_2: a Docker service's name


def test_each_client_listener_has_an_address_of_its_own() -> None:
    """A listener given twice, or plain and HTTPS on one port, passed check-config. With one worker the node then
    stopped at start saying only `cannot listen on ...: Address already in use`, as if another process held it; with
    several (SO_REUSEPORT) it started, and the kernel handed each connection to the plain or the TLS socket at random:
    half of the HTTP and of the HTTPS requests to a real node failed."""

    def listener_problems(server: dict[str, object]) -> list[str]:
        try:
            build({"server": server, "sites": [SITE]}, "f.toml", Path("/x"))
        except ConfigError as exc:
            return [p for p in exc.problems if "certificate" not in p]
        return []

    assert listener_problems({"listen": ["127.0.0.1:8080", "127.0.0.1:8080"]}) == [
        "f.toml: server.listen: 127.0.0.1:8080 is also server.listen (127.0.0.1:8080): "
        "give each listener an address of its own"
    ]
    assert listener_problems({"listen": ["0.0.0.0:8080"], "tls_listen": ["127.0.0.1:8080"], "workers": 2}) == [
        "f.toml: server.tls_listen: 127.0.0.1:8080 is also server.listen (0.0.0.0:8080): "
        "give each listener an address of its own"
    ]
    assert listener_problems({"listen": ["[::]:8443"], "tls_listen": ["[::1]:8443"]}) == [
        "f.toml: server.tls_listen: [::1]:8443 is also server.listen ([::]:8443): "
        "give each listener an address of its own"
    ]
    # The dual-stack pair config/kubernetes/ suggests, other ports, and HTTPS beside HTTP: no conflict.
    assert listener_problems({"listen": ["0.0.0.0:8080", "[::]:8080"]}) == []
    assert listener_problems({"listen": ["0.0.0.0:80", "127.0.0.1:8080"], "tls_listen": ["0.0.0.0:443"]}) == []


def test_the_admin_listener_has_an_address_of_its_own() -> None:
    """admin.listen on a client listener's address used to pass check-config; each worker then died in
    `OSError: address already in use`, in a restart loop."""
    server = {"listen": ["127.0.0.1:8080", "0.0.0.0:8081", "[::1]:8082"], "tls_listen": ["[::]:8443"]}

    def admin_problems(admin: str) -> list[str]:
        try:
            build({"server": server, "admin": {"listen": admin}, "sites": [SITE]}, "f.toml", Path("/x"))
        except ConfigError as exc:  # always: server.tls_listen has no certificate
            return [p for p in exc.problems if "admin.listen" in p]
        raise AssertionError("no ConfigError")

    assert admin_problems("127.0.0.1:8080") == [
        "f.toml: admin.listen: 127.0.0.1:8080 is also server.listen (127.0.0.1:8080): "
        "give the admin API an address of its own"
    ]
    assert admin_problems("10.0.0.1:8081") == [  # 0.0.0.0 is every IPv4 address
        "f.toml: admin.listen: 10.0.0.1:8081 is also server.listen (0.0.0.0:8081): "
        "give the admin API an address of its own"
    ]
    assert admin_problems("[0:0::1]:8082") == [
        "f.toml: admin.listen: [0:0::1]:8082 is also server.listen ([::1]:8082): "
        "give the admin API an address of its own"
    ]
    assert admin_problems("[::1]:8443") == [
        "f.toml: admin.listen: [::1]:8443 is also server.tls_listen ([::]:8443): "
        "give the admin API an address of its own"
    ]
    # Another port, or the other IP version on a wildcard's port (IPv6 sockets are IPv6 only): no conflict.
    for admin in ("127.0.0.1:9180", "[::1]:8081", "127.0.0.1:8443", "[::2]:8082"):
        assert admin_problems(admin) == []
    with pytest.raises(ConfigError) as exc:
        one_origin("http://o.test", "0.0.0.0:8080", "/tmp/c", admin="127.0.0.1:8080")
    assert exc.value.problems == [
        "command line: --admin: 127.0.0.1:8080 is also --listen (0.0.0.0:8080): "
        "give the admin API an address of its own"
    ]


def test_two_sites_may_not_share_a_name() -> None:
    """A site's name scopes its cache keys, purges and tokens: a provider token for one would purge the other."""
    other = {**SITE, "hosts": ["other.test"], "origins": ["http://10.0.0.2:8080"]}
    assert problems({"sites": [SITE, other]}) == [
        "f.toml: sites[1].name: 'v' is also the name of another site: give each site its own name"
    ]
    build({"sites": [SITE, {**other, "name": "w"}]}, "f.toml", Path("/etc/edgecache"))  # names of their own


def test_the_access_log_is_the_path_of_a_file(tmp_path: Path) -> None:
    """A directory or a number passed check-config; the worker then failed to open it with a traceback, and every
    line of the access log (what a site is billed from) was lost."""
    for value in (str(tmp_path), 8080, "", "a\x00b"):
        with pytest.raises(ConfigError) as exc:
            build({"log": {"access": value}, "sites": [SITE]}, "f.toml", tmp_path)
        assert len(exc.value.problems) == 1, value
        assert exc.value.problems[0].startswith("f.toml: log.access: "), value
    assert problems({"log": {"access": str(tmp_path)}, "sites": [SITE]}) == [
        f"f.toml: log.access: {str(tmp_path)!r} is a directory: name a file in it"
    ]
    assert build({"log": {"access": "a.log"}, "sites": [SITE]}, "f.toml", tmp_path).access_log == tmp_path / "a.log"
    assert build({"log": {"access": "/v/a.log"}, "sites": [SITE]}, "f.toml", tmp_path).access_log == Path("/v/a.log")


def test_workers_and_node_addresses_within_reason() -> None:
    """A typo in server.workers forked that many processes, and two cluster nodes at one address each took the
    other for a peer: both passed check-config."""
    assert problems({"server": {"workers": 1000}, "sites": [SITE]}) == [
        "f.toml: server.workers: expected a number of worker processes between 1 and 256"
    ]
    assert build({"server": {"workers": 256}, "sites": [SITE]}, "f.toml", Path("/e")).workers == 256
    nodes = [{"id": "a", "address": "10.0.0.1:80"}, {"id": "b", "address": "10.0.0.1:80"}]
    cluster = {"self": "a", "key": "k" * 64, "nodes": nodes}
    assert problems({"cluster": cluster, "sites": [SITE]}) == ["f.toml: cluster.nodes: node addresses must be unique"]


def test_addresses_peers_cannot_use_are_named() -> None:
    """All three passed check-config: a member at 0.0.0.0 (its peers connected to themselves), an admin address
    that is another node's client port (purges answered as a viewer's requests), and one node listed twice as
    localhost and 127.0.0.1."""
    key = "k" * 64
    nodes = [{"id": "a", "address": "0.0.0.0:8080"}, {"id": "b", "address": "10.0.0.2:8080"}]
    assert problems({"cluster": {"self": "a", "key": key, "nodes": nodes}, "sites": [SITE]}) == [
        "f.toml: cluster.nodes[0].address: 0.0.0.0:8080 is where a node listens, not where its peers reach it: give "
        "the address the other nodes connect to (peers would connect to themselves)"
    ]
    nodes = [{"id": "a", "address": "10.0.0.1:8080"}, {"id": "b", "address": "10.0.0.2:8080", "admin": "10.0.0.1:8080"}]
    assert problems({"cluster": {"self": "a", "key": key, "nodes": nodes}, "sites": [SITE]}) == [
        "f.toml: cluster.nodes[1].admin: 10.0.0.1:8080 is node 'a''s client address: purges sent there would be "
        "answered as a viewer's requests"
    ]
    nodes = [{"id": "a", "address": "localhost:8080"}, {"id": "b", "address": "127.0.0.1:8080"}]
    assert problems({"cluster": {"self": "a", "key": key, "nodes": nodes}, "sites": [SITE]}) == [
        "f.toml: cluster.nodes: node addresses must be unique"
    ]
    nodes = [{"id": "a", "address": "10.0.0.1:8080", "admin": "10.0.0.1:9090"}, {"id": "b", "address": "[::1]:8080"}]
    built = build({"cluster": {"self": "a", "key": key, "nodes": nodes}, "sites": [SITE]}, "f.toml", Path("/e"))
    assert built.cluster is not None
    assert [n.address for n in built.cluster.nodes] == ["10.0.0.1:8080", "[::1]:8080"]


def test_a_sites_cache_that_is_not_a_table_is_named_by_its_site() -> None:
    """It was reported as the top-level `cache`, which is another table: an operator fixed the wrong one."""
    doc = {"sites": [SITE, {**SITE, "name": "w", "hosts": ["w.test"], "cache": 5}]}
    assert problems(doc) == ["f.toml: sites[1].cache: expected a table"]


def test_twenty_thousand_sites_are_checked_in_linear_time() -> None:
    """Each site's name was compared with every site before it: 20,000 sites took 40 s to check, on the loop
    of the parent process (SIGHUP) and in every worker's reload."""
    sites = [
        {"name": f"s{i}", "hosts": [f"h{i}.test", f"*.w{i}.test"], "origins": ["http://10.0.0.1"]}
        for i in range(20_000)
    ]
    started = time.monotonic()
    cfg = build({"sites": sites}, "f.toml", Path("/etc/edgecache"))
    assert time.monotonic() - started < 5.0
    assert len(cfg.sites) == 20_000
    assert problems({"sites": [*sites, {**SITE, "name": "s7"}]}) == [
        "f.toml: sites[20000].name: 's7' is also the name of another site: give each site its own name"
    ]


def test_the_demo_origin_has_an_address_of_its_own() -> None:
    """check-config said ok; then worker 0 bound the demo origin and died on the other listener, again and again."""
    base = {"sites": [SITE], "server": {"listen": ["127.0.0.1:8080"]}, "admin": {"listen": "127.0.0.1:9180"}}
    assert problems({**base, "demo": {"origin": "127.0.0.1:9180"}}) == [
        "f.toml: demo.origin: 127.0.0.1:9180 is also admin.listen (127.0.0.1:9180): give the demo origin an address "
        "of its own"
    ]
    assert problems({**base, "demo": {"origin": "0.0.0.0:8080"}}) == [
        "f.toml: demo.origin: 0.0.0.0:8080 is also server.listen (127.0.0.1:8080): give the demo origin an address "
        "of its own"
    ]
    assert build({**base, "demo": {"origin": "127.0.0.1:8081"}}, "f.toml", Path("/x")).demo_origin is not None


def test_one_origin_mode_holds_its_sizes_to_the_config_files_rules(tmp_path: Path) -> None:
    """`serve --origin URL --slice 1` started a node of 1-byte slices (a 64 MiB object, 67 million of them), where
    `slice = "1"` in a file is refused; so did a disk too small for 16 slices."""
    sizes = {"memory_bytes": 2**20, "disk_bytes": 2**30, "slice_bytes": 2**20}
    args = ("http://10.0.0.1:8080", "127.0.0.1:8080", str(tmp_path))
    assert one_origin(*args, **sizes).cache.slice_bytes == 2**20
    for change, problem in (
        ({"slice_bytes": 1}, "command line: --slice: must be between 4KiB and 64MiB"),
        ({"slice_bytes": 2**27}, "command line: --slice: must be between 4KiB and 64MiB"),
        ({"disk_bytes": 15 * 2**20}, "command line: --disk: must hold at least 16 slices"),
    ):
        with pytest.raises(ConfigError) as info:
            one_origin(*args, **{**sizes, **change})
        assert info.value.problems == [problem]


def test_a_burst_below_one_request_is_refused() -> None:
    """A bucket that can never hold a whole token refused every request of every client with 429, and check-config
    said ok."""
    assert problems({"server": {"rate_limit": 5, "burst": 0.5}, "sites": [SITE]}) == [
        "f.toml: server.burst: expected at least 1 (requests a client may make at once): below it, no request of "
        "any client is ever let in"
    ]
    assert build({"server": {"rate_limit": 5, "burst": 1}, "sites": [SITE]}, "f.toml", Path("/x")).burst == 1.0


def test_cache_tiers_inclusive_by_default_exclusive_with_one_worker_only() -> None:
    """cache.tiers: "exclusive" keeps a slice in one worker's memory, where the other workers would miss it."""
    assert build({"sites": [SITE]}, "f.toml", Path("/e")).cache.tiers == "inclusive"
    assert build({"cache": {"tiers": "exclusive"}, "sites": [SITE]}, "f.toml", Path("/e")).cache.tiers == "exclusive"
    assert problems({"cache": {"tiers": "exclusive"}, "server": {"workers": 2}, "sites": [SITE]}) == [
        "f.toml: cache.tiers: 'exclusive' needs one worker: a slice in one worker's memory only is a miss for the"
        " others (server.workers is 2; set 'inclusive' for several)"
    ]
    assert problems({"cache": {"tiers": "victim"}, "sites": [SITE]}) == [
        "f.toml: cache.tiers: must be 'inclusive' or 'exclusive'"
    ]


def test_cache_save_on_stop_defaults_to_ten_seconds_and_counts_in_a_stop_with_exclusive_tiers_only() -> None:
    """cache.save_on_stop: what a stopping worker spends writing exclusive tiers' memory to disk, after the drain;
    the parent waits for it before it kills the worker (supervisor: drain + stop_save_seconds + KILL_AFTER)."""
    inclusive = build({"cache": {"save_on_stop": 30}, "sites": [SITE]}, "f.toml", Path("/e")).cache
    assert (inclusive.save_on_stop, inclusive.stop_save_seconds) == (30.0, 0.0)
    exclusive = build({"cache": {"tiers": "exclusive"}, "sites": [SITE]}, "f.toml", Path("/e")).cache
    assert (exclusive.save_on_stop, exclusive.stop_save_seconds) == (10.0, 10.0)
    assert problems({"cache": {"save_on_stop": -1}, "sites": [SITE]}) == [
        "f.toml: cache.save_on_stop: expected seconds (a finite number >= 0)"
    ]
    assert problems({"cache": {"save_on_stop": 3601}, "sites": [SITE]}) == [
        "f.toml: cache.save_on_stop: expected seconds between 0 and 3600"
    ]


def test_cache_lease_defaults_to_ten_seconds_and_is_at_least_two() -> None:
    """cache.lease: how long the other workers wait for a slice (or a revalidation) one worker leased; under two
    seconds a whole copy's holder, renewing once a second as its bytes come, could lose it between renewals."""
    assert build({"sites": [SITE]}, "f.toml", Path("/e")).cache.lease == 10.0
    assert build({"cache": {"lease": 2.5}, "sites": [SITE]}, "f.toml", Path("/e")).cache.lease == 2.5
    for wrong in (1.5, 3601):
        assert problems({"cache": {"lease": wrong}, "sites": [SITE]}) == [
            "f.toml: cache.lease: expected seconds between 2 and 3600"
        ]
    assert problems({"cache": {"lease": "10s"}, "sites": [SITE]}) == [
        "f.toml: cache.lease: expected seconds (a finite number >= 0)"
    ]


def test_cache_stats_interval_defaults_to_five_seconds_and_is_at_least_half_a_second() -> None:
    """cache.stats_interval: how often a worker samples its tiers for the gauges on /metrics."""
    assert build({"sites": [SITE]}, "f.toml", Path("/e")).cache.stats_interval == 5.0
    assert build({"cache": {"stats_interval": 0.5}, "sites": [SITE]}, "f.toml", Path("/e")).cache.stats_interval == 0.5
    for wrong in (0, 0.1, 3601):
        assert problems({"cache": {"stats_interval": wrong}, "sites": [SITE]}) == [
            "f.toml: cache.stats_interval: expected seconds between 0.5 and 3600"
        ]


def test_cache_purged_records_defaults_to_a_hundred_thousand_and_is_a_whole_number_within_reason() -> None:
    """cache.purged_records: the records of purged URLs each disk keeps, about 260 bytes each outside its budget. Zero
    would keep none (every purge dropped at once), and a bound past any disk's means none: standard 3."""
    assert build({"sites": [SITE]}, "f.toml", Path("/e")).cache.purged_records == 100_000
    for right in (1, 100_000_000):
        assert build(
            {"cache": {"purged_records": right}, "sites": [SITE]}, "f.toml", Path("/e")
        ).cache.purged_records == (right)
    for wrong in (0, -1, 1.5, 100_000.0, "100k", True, 100_000_001, 2**63 - 1):
        assert problems({"cache": {"purged_records": wrong}, "sites": [SITE]}) == [
            "f.toml: cache.purged_records: expected a whole number of records between 1 and 100,000,000 (each about "
            "260 bytes of every disk's database, outside its budget)"
        ], wrong


def test_server_reload_timeout_defaults_to_ten_seconds_and_is_at_least_one() -> None:
    """server.reload_timeout: how long a reload waits for its read of the config file before refusing it."""
    assert build({"sites": [SITE]}, "f.toml", Path("/e")).reload_timeout == 10.0
    assert build({"server": {"reload_timeout": 2}, "sites": [SITE]}, "f.toml", Path("/e")).reload_timeout == 2.0
    for wrong in (0, 0.5, 3601):
        assert problems({"server": {"reload_timeout": wrong}, "sites": [SITE]}) == [
            "f.toml: server.reload_timeout: expected seconds between 1 and 3600"
        ]


def test_an_access_log_name_too_long_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    """check-config crashed with OSError ENAMETOOLONG on log.access = "9" * 300 (found by loadtest.fuzz)."""
    with pytest.raises(ConfigError) as exc:
        build({"log": {"access": "9" * 300}, "sites": [SITE]}, "f.toml", tmp_path)
    assert exc.value.problems == [f"f.toml: log.access: cannot be a file (File name too long): {'9' * 300!r}"[:320]]


def test_max_object_size_defaults_to_an_eighth_of_the_disk_and_a_site_may_have_its_own() -> None:
    etc = Path("/etc/edgecache")
    cfg = build({"sites": [SITE]}, "f.toml", etc)
    assert (cfg.cache.max_object_size, cfg.cache.object_limit) == (0, 512 * 2**20)  # disk: 4 GiB
    cfg = build({"cache": {"disk": "64GiB", "max_object_size": "20GiB"}, "sites": [SITE]}, "f.toml", etc)
    assert cfg.cache.object_limit == 20 * 2**30
    own = {**SITE, "cache": {"max_object_size": "1MiB"}}
    cfg = build({"sites": [own, {**SITE, "name": "b", "hosts": ["b.example"]}]}, "f.toml", etc)
    assert [s.policy.max_object_size for s in cfg.sites] == [2**20, None]
    disks = {"disks": [{"path": "/srv/a", "size": "1GiB"}, {"path": "/srv/b", "size": "1GiB"}]}
    assert build({"cache": disks, "sites": [SITE]}, "f.toml", etc).cache.object_limit == 256 * 2**20  # of their sum


def test_a_bad_max_object_size_names_the_file_the_key_and_the_problem() -> None:
    def site(size: object) -> dict[str, object]:
        return {**SITE, "cache": {"max_object_size": size}}

    assert problems({"cache": {"max_object_size": 0}, "sites": [SITE]}) == [
        "f.toml: cache.max_object_size: must be at least 1 byte (to store objects of any size, give the disk budget)"
    ]
    assert problems({"cache": {"max_object_size": "big"}, "sites": [SITE]}) == [
        "f.toml: cache.max_object_size: 'big' is not a size such as 256MiB"
    ]
    assert problems({"cache": {"max_object_size": -1}, "sites": [SITE]}) == [
        "f.toml: cache.max_object_size: must not be negative"
    ]
    assert problems({"cache": {"disk": "1GiB", "max_object_size": "2GiB"}, "sites": [SITE]}) == [
        "f.toml: cache.max_object_size: 2147483648 bytes is more than the disk budget (cache.disk: 1073741824 bytes)"
    ]
    assert problems({"cache": {"disk": "1GiB"}, "sites": [site("1.5GiB")]}) == [
        "f.toml: sites[0].cache.max_object_size: 1610612736 bytes is more than the disk budget (cache.disk: "
        "1073741824 bytes)"
    ]
    assert problems({"sites": [site("0")]}) == [
        "f.toml: sites[0].cache.max_object_size: must be at least 1 byte (to store objects of any size, give the disk "
        "budget)"
    ]
    assert problems({"sites": [site(True)]}) == [
        "f.toml: sites[0].cache.max_object_size: expected a size such as 256MiB"
    ]
