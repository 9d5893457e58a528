"""core.hop: a hop field only a key holder can write, for one request, for MAX_SKEW seconds; and the cluster key's
config (required for a cluster of several nodes, with a message saying how to make one)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecache.cluster.view import ClusterView
from edgecache.config import ClusterSettings, build
from edgecache.core.hop import MAX_LENGTH, MAX_SKEW, Hop, Refused, sign, verify
from edgecache.core.ring import Member
from edgecache.errors import ConfigError

KEY = b"k" * 32
OTHER = b"o" * 32
PRIMARY = "videos|video.test|/a.bin"
NOW = 1_764_646_800
HOP = Hop("node1", NOW, "1f2e-3a", "127.0.0.2", False)


def test_a_signed_hop_verifies_as_itself() -> None:
    value = sign(KEY, HOP, "GET", PRIMARY)
    assert value.startswith("node=node1;t=1764646800;id=1f2e-3a;for=127.0.0.2;fo=0;sig=")
    assert verify(KEY, [value], "GET", PRIMARY, NOW) == HOP
    failover = Hop("[fd00::1]:8080", NOW, "a-1", "fe80::1%eth0", True)
    assert verify(KEY, [sign(KEY, failover, "HEAD", PRIMARY)], "HEAD", PRIMARY, NOW) == failover


def test_another_key_request_or_altered_field_is_refused() -> None:
    value = sign(KEY, HOP, "GET", PRIMARY)
    bad = Refused("bad signature")
    assert verify(OTHER, [value], "GET", PRIMARY, NOW) == bad
    assert verify(KEY, [value], "POST", PRIMARY, NOW) == bad
    assert verify(KEY, [value], "GET", PRIMARY + "x", NOW) == bad  # moved to another object
    assert verify(KEY, [value.replace("127.0.0.2", "127.0.0.3")], "GET", PRIMARY, NOW) == bad
    assert verify(KEY, [value.replace("fo=0", "fo=1")], "GET", PRIMARY, NOW) == bad
    assert verify(KEY, [value, value], "GET", PRIMARY, NOW) == Refused("more than one hop field")
    assert verify(b"", [value], "GET", PRIMARY, NOW) == Refused("this node has no cluster key")


def test_blanks_around_each_part_are_taken_and_none_within_the_signature() -> None:
    value = sign(KEY, HOP, "GET", PRIMARY)
    assert verify(KEY, [" " + value.replace(";", " ;\t") + " \t"], "GET", PRIMARY, NOW) == HOP
    inside = value.index("sig=") + 10
    assert verify(KEY, [f"{value[:inside]} {value[inside:]}"], "GET", PRIMARY, NOW) == Refused("malformed")


@pytest.mark.parametrize("key", [KEY, b"x" * 64, bytes(range(200))])  # shorter than a block, one, longer (hashed)
def test_the_signature_is_hmac_sha256_of_the_length_prefixed_parts(key: bytes) -> None:
    lookaside = Hop("node1", NOW, "1f2e-3a", "127.0.0.2", True, lookaside=True)
    cases = [
        (HOP, b"5:node110:17646468007:1f2e-3a9:127.0.0.21:0", "fo=0"),
        (lookaside, b"5:node110:17646468007:1f2e-3a9:127.0.0.21:11:1", "fo=1;la=1"),
    ]
    for hop, parts, flags in cases:
        message = b"15:edgecache-hop-13:GET%d:%s%s" % (len(PRIMARY), PRIMARY.encode(), parts)
        mac = base64.urlsafe_b64encode(hmac.new(key, message, hashlib.sha256).digest()).rstrip(b"=").decode()
        expected = f"node=node1;t={NOW};id=1f2e-3a;for=127.0.0.2;{flags};sig={mac}"
        assert sign(key, hop, "GET", PRIMARY) == expected
        assert verify(key, [expected], "GET", PRIMARY, NOW) == hop


def test_the_time_window_bounds_a_replay() -> None:
    value = sign(KEY, HOP, "GET", PRIMARY)
    assert verify(KEY, [value], "GET", PRIMARY, NOW + MAX_SKEW) == HOP
    assert verify(KEY, [value], "GET", PRIMARY, NOW - MAX_SKEW) == HOP  # the forwarding node's clock is ahead
    late = Refused("outside the time window")
    assert verify(KEY, [value], "GET", PRIMARY, NOW + MAX_SKEW + 1) == late
    assert verify(KEY, [value], "GET", PRIMARY, NOW - MAX_SKEW - 1) == late


@pytest.mark.parametrize(
    "value",
    [
        "",
        "node1",
        "x" * (MAX_LENGTH + 1),
        "node=node1;t=1;id=a;for=b;fo=0",
        "node=node1;t=1;id=a;for=b;fo=0;sig=x;more=1",
        "t=1;node=node1;id=a;for=b;fo=0;sig=x",
        "node=node 1;t=1;id=a;for=b;fo=0;sig=x",
        "node=node1;t=-1;id=a;for=b;fo=0;sig=x",
        "node=node1;t=1;id=a;for=b;fo=2;sig=x",
        "node=node1;t=1;id=a;for=;fo=0;sig=x",
        "node=n\u00f6de;t=1;id=a;for=b;fo=0;sig=x",
    ],
)
def test_malformed_fields_are_refused(value: str) -> None:
    assert verify(KEY, [value], "GET", PRIMARY, NOW) == Refused("malformed")


@given(st.text(max_size=500), st.text(max_size=80))
def test_verify_never_raises_on_client_input(value: str, primary: str) -> None:
    assert isinstance(verify(KEY, [value], "GET", primary, NOW), Refused)


def test_sign_refuses_what_it_cannot_write_and_writes_an_odd_viewer_as_dash() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        sign(b"short", HOP, "GET", PRIMARY)
    with pytest.raises(ValueError, match="cannot be written"):
        sign(KEY, Hop("node;1", NOW, "a", "127.0.0.2", False), "GET", PRIMARY)
    odd = sign(KEY, Hop("node1", NOW, "a", "not an address", False), "GET", PRIMARY)
    assert verify(KEY, [odd], "GET", PRIMARY, NOW) == Hop("node1", NOW, "a", "-", False)


SITE = {"name": "v", "hosts": ["video.test"], "origins": ["http://10.0.0.1:8080"]}
NODES = [{"id": "n1", "address": "127.0.0.1:1"}, {"id": "n2", "address": "127.0.0.1:2"}]
HOW = "make one with `openssl rand -hex 32` and give every node the same"


def problems(cluster: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        build({"sites": [SITE], "cluster": cluster}, "f.toml", Path("/etc/edgecache"))
    return exc.value.problems


def cluster_key(cluster: dict[str, object], base: Path = Path("/etc/edgecache")) -> bytes:
    config = build({"sites": [SITE], "cluster": cluster}, "f.toml", base)
    assert config.cluster is not None
    return config.cluster.key


def test_a_cluster_of_several_nodes_needs_a_key(tmp_path: Path) -> None:
    assert problems({"self": "n1", "nodes": NODES}) == [
        f"f.toml: cluster.key: a cluster of several nodes needs a shared key to sign forwarded requests: {HOW}"
    ]
    dns = {"self": "10.0.0.1:8080", "dns": "peers.test:8080"}
    assert problems(dns)[0].startswith("f.toml: cluster.key: a cluster of several nodes needs a shared key")
    assert cluster_key({"self": "n1", "nodes": NODES[:1]}) == b""  # this node alone forwards nothing
    assert cluster_key({"self": "n1", "nodes": NODES, "key": "a" * 32}) == b"a" * 32
    (tmp_path / "cluster.key").write_text("b" * 64 + "\n")
    assert cluster_key({"self": "n1", "nodes": NODES, "key_file": "cluster.key"}, tmp_path) == b"b" * 64


def test_bad_cluster_keys_are_named() -> None:
    short = f"f.toml: cluster.key: must be at least 32 printable ASCII characters: {HOW}"
    assert problems({"self": "n1", "nodes": NODES, "key": "a" * 31}) == [short]
    assert problems({"self": "n1", "nodes": NODES, "key": 12345678901234567890123456789012345}) == [short]
    assert problems({"self": "n1", "nodes": NODES, "key": "\u00e9" * 32}) == [short]
    assert problems({"self": "n1", "nodes": NODES, "key": "a" * 32, "key_file": "k"}) == [
        "f.toml: cluster.key: give one of key and key_file, not both"
    ]
    assert problems({"self": "n1", "nodes": NODES, "key_file": "/nonexistent/cluster.key"}) == [
        "f.toml: cluster.key_file: cannot read '/nonexistent/cluster.key': No such file or directory"
    ]


def test_a_key_being_changed_to_or_from_is_accepted_besides_the_key(tmp_path: Path) -> None:
    def accepted(cluster: dict[str, object]) -> tuple[bytes, ...]:
        config = build({"sites": [SITE], "cluster": cluster}, "f.toml", tmp_path)
        assert config.cluster is not None
        return config.cluster.accepted

    assert accepted({"self": "n1", "nodes": NODES, "key": "a" * 32}) == ()
    assert accepted({"self": "n1", "nodes": NODES, "key": "a" * 32, "accept_key": "c" * 32}) == (b"c" * 32,)
    (tmp_path / "next.key").write_text("d" * 64 + "\n")
    assert accepted({"self": "n1", "nodes": NODES, "key": "a" * 32, "accept_key_file": "next.key"}) == (b"d" * 64,)
    both = {"self": "n1", "nodes": NODES, "key": "a" * 32, "accept_key": "c" * 32, "accept_key_file": "next.key"}
    assert problems(both) == ["f.toml: cluster.accept_key: give one of accept_key and accept_key_file, not both"]
    assert problems({"self": "n1", "nodes": NODES, "key": "a" * 32, "accept_key": "c" * 31}) == [
        f"f.toml: cluster.accept_key: must be at least 32 printable ASCII characters: {HOW}"
    ]
    assert problems({"self": "n1", "nodes": NODES[:1], "accept_key": "c" * 32}) == [
        "f.toml: cluster.accept_key: is honoured besides key, which is not set"
    ]
    # Honoured as the key is; never signed with.
    view = ClusterView(ClusterSettings(self_id="n1", key=KEY, accepted=(b"c" * 32,), nodes=(Member("n1", "-"),)))
    now = int(time.time())
    for key in (KEY, b"c" * 32):
        field = sign(key, Hop("n2", now, "a", "127.0.0.2", False), "GET", PRIMARY)
        assert view.honoured([field], "GET", PRIMARY) == Hop("n2", now, "a", "127.0.0.2", False)
    assert view.honoured([sign(b"e" * 32, Hop("n2", now, "a", "-", False), "GET", PRIMARY)], "GET", PRIMARY) is None
    mine = view.hop_field("GET", PRIMARY, "a", "-", False)
    assert isinstance(verify(KEY, [mine], "GET", PRIMARY, now), Hop)
    assert verify(b"c" * 32, [mine], "GET", PRIMARY, now) == Refused("bad signature")


def test_the_key_is_never_in_the_settings_repr() -> None:
    assert "a" * 32 not in repr(
        build({"sites": [SITE], "cluster": {"self": "n1", "nodes": NODES, "key": "a" * 32}}, "f", Path("/"))
    )


def test_hops_not_honoured_are_logged_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    """A client can send a forged hop field with every request: the log says so, but does not grow with them."""
    view = ClusterView(ClusterSettings(self_id="n1", key=KEY, nodes=(Member("n1", "127.0.0.1:1"),)))
    good = sign(KEY, HOP, "GET", PRIMARY)
    with caplog.at_level(logging.WARNING, logger="edgecache.cluster.view"):
        assert all(view.honoured(["forged"], "GET", PRIMARY) is None for _ in range(1000))
        assert view.honoured([], "GET", PRIMARY) is None  # no field: a client's request, nothing to say
    assert [r.getMessage() for r in caplog.records] == [
        "a request's Edgecache-Hop field was not honoured (malformed): taken as a client's"
    ]
    assert view.honoured([good], "GET", PRIMARY) is None  # its time is long past
    now = Hop("n2", int(time.time()), "a-1", "127.0.0.2", True)
    assert view.honoured([sign(KEY, now, "GET", PRIMARY)], "GET", PRIMARY) == now
