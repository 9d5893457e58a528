"""A fill that reads a peer's body as it reads an origin's (proxy.origin.read_chunks) and meets it broken: the
failure is the peer's, answered as peer_failed says (which node and what it said stay in the log) and counted
against the peer, never as "origin failed: peer node2 body broken: ..." counted against the origin (found by
loadtest.fuzz_e2e --modes cluster: 4 such 502s in 90 s of seed 46)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from edgecache.errors import OriginError, PeerCut, VersionChanged
from edgecache.proxy import errorpage
from edgecache.proxy.origin import read_chunks
from tests.samples import sample_value


class Broken:
    """An aiohttp body stream whose first read finds the connection cut."""

    async def readchunk(self) -> tuple[bytes, bool]:
        raise aiohttp.ClientPayloadError("Response payload is not completed")

    def at_eof(self) -> bool:
        return False


def sample(name: str, **labels: str) -> float:
    return sample_value(name, labels) or 0.0


def origin_errors() -> float:
    return sum(sample("edgecache_origin_errors_total", site="videos", kind=k) for k in ("connect", "failed"))


async def failure(peer: str | None) -> OriginError:
    resp: Any = SimpleNamespace(peer=peer, site="videos", raw=SimpleNamespace(content=Broken()), addr="10.0.0.5:80")
    with pytest.raises(OriginError) as caught:
        async for _ in read_chunks(resp):
            pass
    return caught.value


async def test_a_peers_broken_body_is_answered_and_counted_as_the_peers() -> None:
    before, origin_before = sample("edgecache_peer_errors_total", peer="node2", kind="reset"), origin_errors()
    exc = await failure("node2")
    assert sample("edgecache_peer_errors_total", peer="node2", kind="reset") == before + 1
    assert origin_errors() == origin_before
    assert errorpage.origin_failed(exc) == (502, "peer failed (reset)", False)  # False: not the origin's to count
    assert errorpage.origin_failed(exc.revalidating()) == (502, "peer failed (reset)", False)
    assert (exc.tried, exc.revalidating().tried) == ("10.0.0.5:80", "10.0.0.5:80")  # the access log's upstream_addr


async def test_an_origins_broken_body_is_still_the_origins() -> None:
    exc = await failure(None)
    assert exc.peer_kind is None
    status, reason, counted = errorpage.origin_failed(exc)
    assert (status, reason.startswith("origin failed: origin body broken: "), counted) == (502, True, True)


def test_a_peers_timeout_met_in_its_body_is_a_504_naming_no_node() -> None:
    exc = OriginError("peer node3 body read timed out", timeout=True, peer_kind="timeout")
    assert errorpage.origin_failed(exc) == (504, "peer failed (timeout)", False)


async def test_a_peers_broken_body_is_a_cut_its_readers_that_sent_nothing_try_again_after() -> None:
    """What a fill's readers meet (Engine._run_fill): a peer's broken body is a PeerCut, a try as a new version is
    (core.churn), still the peer's failure should it be answered; a timeout, or an origin's failure, as it was."""
    exc = await failure("node2")
    cut = PeerCut.of(exc)
    assert isinstance(cut, PeerCut)
    assert isinstance(cut, VersionChanged)
    assert (cut.reason, cut.peer_kind, PeerCut.of(cut)) == (exc.reason, "reset", cut)
    assert errorpage.origin_failed(cut) == (502, "peer failed (reset)", False)
    timeout = OriginError("peer node3 body read timed out", timeout=True, peer_kind="timeout")
    origin = await failure(None)
    assert (PeerCut.of(timeout), PeerCut.of(origin)) == (timeout, origin)
