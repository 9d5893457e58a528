"""The shipped Kubernetes manifest works as shipped: its config loads with edgecache's own loader from where the
pod mounts it, with the Secrets its header says how to make; the memory limit covers the configured tiers; the
node reads the ConfigMap's own file and watches it. And the config keys that make this work refuse bad values."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgecache.config import Config, build, load
from edgecache.core.nodeid import host_label
from edgecache.errors import ConfigError
from edgecache.supervisor import KILL_AFTER

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "config" / "kubernetes" / "edgecache.yaml"
# The memory rule the manifest's comment states, beyond each worker's cache.memory + cache.memory_headroom.
SUPERVISOR = 256 * 2**20
PAGE_CACHE = 2**30
UNITS = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def quantity(text: str) -> int:
    """A Kubernetes memory quantity (6Gi, 512Mi, 1G, 1073741824) in bytes."""
    m = re.fullmatch(r"([0-9]+)([A-Za-z]*)", str(text))
    assert m is not None, text
    return int(m.group(1)) * UNITS[m.group(2)]


def documents() -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(MANIFEST.read_text())}


def pod() -> tuple[dict[str, Any], dict[str, Any]]:
    """The StatefulSet's pod spec and its one container."""
    spec = documents()["StatefulSet/edgecache"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def shipped_config(tmp_path: Path) -> Config:
    """The ConfigMap's config, loaded as the pod loads it: every Secret volume's mount replaced by a directory
    holding the files the header's `kubectl create secret` commands make."""
    made = re.findall(r"kubectl create secret generic (\S+) --from-literal=([\w.-]+)=", MANIFEST.read_text())
    assert len(made) == 2, made
    spec, container = pod()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    text = documents()["ConfigMap/edgecache-config"]["data"]["edgecache.toml"]
    for volume in spec["volumes"]:
        if "secret" not in volume:
            continue
        directory = tmp_path / volume["name"]
        directory.mkdir()
        for secret, key in made:
            if secret == volume["secret"]["secretName"]:
                (directory / key).write_text("0123456789abcdef" * 4 + volume["name"] + "\n")
        text = text.replace(mounts[volume["name"]] + "/", f"{directory}/")
    path = tmp_path / "edgecache.toml"
    path.write_text(text)
    return load(path)


def test_the_config_loads_with_the_secrets_the_header_makes(tmp_path: Path) -> None:
    config = shipped_config(tmp_path)
    assert config.cluster is not None
    assert config.cluster.key.startswith(b"0123456789abcdef")
    # Purge and prefetch have an operator: its token is the Secret's file.
    assert [(t.name, t.role, t.secret.endswith("admin-tokens")) for t in config.tokens] == [
        ("operator", "operator", True)
    ]


def test_node_ids_are_the_pods_names(tmp_path: Path) -> None:
    config = shipped_config(tmp_path)
    assert config.cluster is not None
    assert config.cluster.dns == "edgecache-peers.default.svc.cluster.local:8080"
    assert not config.cluster.nodes
    # No `self`: the host name, which in a StatefulSet pod is the pod's name, as its PTR record names it.
    assert config.cluster.self_id == host_label(socket.gethostname())


def test_the_memory_limit_covers_the_configured_tiers(tmp_path: Path) -> None:
    config = shipped_config(tmp_path)
    _, container = pod()
    resources = container["resources"]
    limit = quantity(resources["limits"]["memory"])
    workers = config.workers * (config.cache.memory_bytes + config.cache.memory_headroom)
    assert limit >= workers + SUPERVISOR + PAGE_CACHE, (limit, workers)
    assert quantity(resources["requests"]["memory"]) == limit


def test_the_node_reads_and_watches_the_configmaps_own_file(tmp_path: Path) -> None:
    spec, container = pod()
    assert "command" not in container  # the image's entrypoint, edgecache, with no shell copying the file
    assert container["args"] == ["serve", "--config", "/etc/edgecache/edgecache.toml"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert mount == {"name": "config", "mountPath": "/etc/edgecache"}  # a directory: a subPath is never updated
    (volume,) = [v for v in spec["volumes"] if v["name"] == "config"]
    assert volume["configMap"]["name"] == "edgecache-config"
    config = shipped_config(tmp_path)
    assert 1 <= config.watch_config <= 10
    assert spec["terminationGracePeriodSeconds"] > config.drain + KILL_AFTER


SITE = {"name": "v", "hosts": ["video.test"], "origins": ["http://10.0.0.1:8080"]}
KEY = "k" * 32


def problems(doc: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        build({"sites": [SITE], **doc}, "f.toml", Path("/etc/edgecache"))
    return exc.value.problems


def test_watch_config_is_off_or_a_few_seconds() -> None:
    assert build({"sites": [SITE]}, "f.toml", Path("/")).watch_config == 0
    assert build({"sites": [SITE], "server": {"watch_config": 5}}, "f.toml", Path("/")).watch_config == 5.0
    between = "f.toml: server.watch_config: expected 0 (off) or seconds between 1 and 3600"
    assert problems({"server": {"watch_config": 0.5}}) == [between]
    assert problems({"server": {"watch_config": 86400}}) == [between]
    assert problems({"server": {"watch_config": -1}}) == [
        "f.toml: server.watch_config: expected seconds (a finite number >= 0)"
    ]
    assert problems({"server": {"watch_config": "5s"}}) == [
        "f.toml: server.watch_config: expected seconds (a finite number >= 0)"
    ]
    assert problems({"server": {"watch_config": True}}) == [
        "f.toml: server.watch_config: expected seconds (a finite number >= 0)"
    ]


def test_self_is_the_host_name_with_dns_and_an_address_in_one_spelling() -> None:
    def self_id(cluster: dict[str, object]) -> str:
        config = build({"sites": [SITE], "cluster": {"key": KEY, **cluster}}, "f.toml", Path("/"))
        assert config.cluster is not None
        return config.cluster.self_id

    dns: dict[str, object] = {"dns": "edgecache-peers:8080"}
    assert self_id(dns) == host_label(socket.gethostname())
    assert self_id({**dns, "self": "edgecache-2"}) == "edgecache-2"
    assert self_id({**dns, "self": "fd00:0:0::1:8080"}) == "[fd00::1]:8080"  # as `${POD_IP}:8080` gave it
    assert self_id({**dns, "self": "[::ffff:10.0.0.1]:8080"}) == "10.0.0.1:8080"
    nodes = [{"id": "[fd00::1]:8080", "address": "[fd00::1]:8080"}, {"id": "fd00::2:8080", "address": "[fd00::2]:8080"}]
    assert self_id({"self": "fd00:0::2:8080", "nodes": nodes}) == "[fd00::2]:8080"
    assert problems({"cluster": {"key": KEY, "nodes": nodes}}) == [
        "f.toml: cluster.self: is required: the id of this node"
    ]
    assert problems({"cluster": {"key": KEY, **dns, "self": "bad id!"}}) == [
        "f.toml: cluster.self: expected a node id of letters, digits, '_', '.', ':' or '-'",
        "f.toml: cluster.self: is required: the id of this node",
    ]


def test_an_ipv6_pod_networks_listeners_are_written_as_urls_need_them() -> None:
    # The manifest's comments for an IPv6 pod network; the admin commands reach the admin API at http://{admin}.
    doc = {"sites": [SITE], "server": {"listen": ["0.0.0.0:8080", "[::]:8080"]}, "admin": {"listen": "[::]:9180"}}
    config = build(doc, "f.toml", Path("/"))
    assert [str(a) for a in config.listen] == ["0.0.0.0:8080", "[::]:8080"]
    assert str(config.admin) == "[::]:9180"


def test_the_access_log_is_rotated_by_the_kubelet_not_left_to_fill_the_cache_volume(tmp_path: Path) -> None:
    """The ConfigMap wrote the access log to /var/cache/edgecache/access.log, on the cache's volume (200Gi, 180GiB
    of it the disk tier's), where no logrotate runs: at some 300 bytes a request, a node answering 2,000 requests a
    second fills the 20 GiB left in half a day; then every write there fails, and a full filesystem lowers the
    disk tier's budget to 90% of what it holds, again and again. The container's stdout is rotated by the kubelet."""
    config = shipped_config(tmp_path)
    assert config.access_log == Path("/dev/stdout")
    _, container = pod()
    assert not any(str(config.access_log).startswith(m["mountPath"] + "/") for m in container["volumeMounts"])
