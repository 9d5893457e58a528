"""Hostile Authorization values on the real admin API: never a 5xx, never accepted, and an unsigned request under
the nodes' scheme costs the node no body read (admin.auth, core.nodeauth)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import string
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecache.config import Token
from edgecache.core import nodeauth
from edgecache.core.purge import peer_token
from tests.e2e.adminkit import TOKENS, admin_node, node_config
from tests.origin import Origin

PEERS = (peer_token(b"k" * 32), peer_token(b"o" * 32))  # cluster.key and an accept_key
WITH_PEERS = (*TOKENS, *(Token("cluster", secret, "peer") for secret in PEERS))
PATHS = [b"/purge", b"/purges/after", b"/ring?url=http://video.test/a", b"/prefetch", b"/nowhere"]


async def exchange(port: int, head: bytes, body: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    assert m is not None, answer[:200]
    return int(m.group(1)), answer


def signed_like(stamp: int, sig: str) -> str:
    return f"t={stamp},sig={sig}"


# Credentials near the form a node sends (a time near now, a signature of the right length or not) and any text.
CREDENTIALS = st.one_of(
    st.builds(signed_like, st.integers(int(time.time()) - 100, int(time.time()) + 100), st.text(max_size=60)),
    st.builds(
        signed_like,
        st.integers(0, 10**13),
        st.text(alphabet=string.ascii_letters + string.digits + "_-=+/", min_size=40, max_size=46),
    ),
    st.text(max_size=80),
)
SCHEMES = st.sampled_from(["Edgecache-Node", "edgecache-node", "EDGECACHE-NODE", "Bearer", "bearer", "Basic", ""])
# Header bytes as a client may send them: anything but CR, LF (the framing) and NUL (refused by the parser, 400).
HEADER_BYTES = st.binary(max_size=80).map(lambda b: b.translate(None, b"\r\n\x00"))


def _answer_length(answer: bytes) -> int:
    head, _, _ = answer.partition(b"\r\n\r\n")
    found = re.search(rb"\r\nContent-Length: (\d+)", head, re.IGNORECASE)
    return len(head) + 4 + (int(found.group(1)) if found else 0)


def blocking_exchange(port: int, head: bytes, body: bytes) -> tuple[int, bytes]:
    """exchange() from a thread, while the test's loop serves the node."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < _answer_length(answer):
            chunk = sock.recv(65536)
            assert chunk, answer[:200]
            answer += chunk
    # (closed here first: its TIME_WAIT is on this side's ephemeral port, not on the few test ports the node has)
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    assert m is not None, answer[:200]
    return int(m.group(1)), answer


async def test_no_authorization_value_gives_a_5xx_or_is_accepted(origin: Origin, tmp_path: Path) -> None:
    """One node, every example against it (hypothesis in a thread: the loop serves the node meanwhile)."""
    cfg = replace(node_config(origin, tmp_path / "c"), tokens=WITH_PEERS)

    @settings(max_examples=300)
    @given(
        scheme=SCHEMES,
        credentials=st.one_of(CREDENTIALS.map(lambda s: s.encode("utf-8", "surrogatepass")), HEADER_BYTES),
        path=st.sampled_from(PATHS),
        body=st.one_of(st.just(b""), st.just(b'{"vector": {}}'), st.binary(max_size=200)),
    )
    def refused(scheme: str, credentials: bytes, path: bytes, body: bytes) -> None:
        head = b"POST " + path + b" HTTP/1.1\r\nHost: admin\r\nAuthorization: " + scheme.encode()
        status, answer = blocking_exchange(node.port, head + b" " + credentials + b"\r\n", body)
        assert status in (400, 401), answer[:300]

    async with admin_node(cfg) as node:
        await asyncio.to_thread(refused)
    assert sum(origin.hits.values()) == 0


async def test_the_nodes_scheme_is_honoured_only_signed(origin: Origin, tmp_path: Path) -> None:
    """The exact signature a node makes is taken (under either key); the same with one byte of the body changed,
    a time outside the window, or another path is not."""
    cfg = replace(node_config(origin, tmp_path / "c"), tokens=WITH_PEERS)
    body = b'{"vector": {}}'
    async with admin_node(cfg) as node:
        for secret in PEERS:
            now = time.time()
            good = nodeauth.authorization(secret, "POST", "/purges/after", body, now).encode()
            stale = nodeauth.authorization(secret, "POST", "/purges/after", body, now - 120).encode()
            head = b"POST /purges/after HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\n"
            assert (await exchange(node.port, head + b"Authorization: " + good + b"\r\n", body))[0] == 200
            for auth, sent in ((good, b'{"vector": {} }'), (stale, body)):
                assert (await exchange(node.port, head + b"Authorization: " + auth + b"\r\n", sent))[0] == 401
            other = head.replace(b"/purges/after", b"/purge")
            assert (await exchange(node.port, other + b"Authorization: " + good + b"\r\n", body))[0] == 401


# Named: a test's id must not hold the time, or pytest-xdist's processes, collecting a second apart, disagree.
@pytest.mark.parametrize(
    "credentials",
    ["garbage", "t=1,sig=" + "A" * 43, f"t={int(time.time())},sig=short"],
    ids=["garbage", "stale", "short-signature"],
)
async def test_an_unsigned_request_under_the_nodes_scheme_is_refused_before_its_body_is_read(
    origin: Origin, tmp_path: Path, credentials: str
) -> None:
    """Malformed credentials, or a time outside the window, cannot be a node's: 401 at once, the body not waited
    for. Before, the guard read the body first (up to admin.body.BODY_SECONDS for one that never comes, then 408)
    and hashed it for each of the nodes' tokens, for anyone who wrote the scheme's name."""
    cfg = replace(node_config(origin, tmp_path / "c"), tokens=WITH_PEERS)
    async with admin_node(cfg) as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        try:
            writer.write(
                b"POST /purges/after HTTP/1.1\r\nHost: admin\r\nAuthorization: Edgecache-Node "
                + credentials.encode()
                + b"\r\nContent-Length: 1000\r\n\r\n{"
            )
            async with asyncio.timeout(5):  # (the body read it waited for before lasts 30 s)
                answer = await reader.readuntil(b"\r\n\r\n")
            writer.write(b" " * 999)  # the rest, which the node reads past (aborted, it lingered 10 s on it)
            await writer.drain()
        finally:
            writer.close()
    assert answer.startswith(b"HTTP/1.1 401 Unauthorized\r\n"), answer
