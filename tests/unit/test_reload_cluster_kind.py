"""lifecycle.as_running: a reload changes the members, weights, key and timings of a running cluster, but turning
the cluster on or off, or moving its members between the file and DNS, waits for a restart (a worker builds its
cluster view, health checks, DNS lookups and purge log sync when it starts), and the reload says so."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgecache.config import ClusterSettings
from edgecache.core.ring import Member
from edgecache.lifecycle import as_running, restart_changes
from tests.conftest import CLUSTER_KEY, make_config

NODES = (Member("node0", "127.0.0.1:1"), Member("node1", "127.0.0.1:2"))
LISTED = ClusterSettings(self_id="node0", key=CLUSTER_KEY, nodes=NODES)
DNS = ClusterSettings(self_id="node0", key=CLUSTER_KEY, dns="edgecache.test:8080")


def test_the_cluster_is_turned_on_off_or_to_dns_only_by_a_restart(tmp_path: Path) -> None:
    plain = make_config(tmp_path, ["http://127.0.0.1:9"])
    listed, dns = replace(plain, cluster=LISTED), replace(plain, cluster=DNS)
    for running, new in ((listed, plain), (plain, listed), (listed, dns), (dns, listed)):
        assert as_running(new, running).cluster == running.cluster
        assert len(restart_changes(new, running)) == 1
    assert restart_changes(plain, listed) == ["cluster (from a cluster to none)"]
    grown = replace(listed, cluster=replace(LISTED, nodes=(*NODES, Member("node2", "127.0.0.1:3", 2.0))))
    assert as_running(grown, listed).cluster == grown.cluster  # a change of members is a reload's
    assert restart_changes(grown, listed) == []
