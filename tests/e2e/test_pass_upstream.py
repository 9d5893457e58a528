"""A miss whose fill a peer's cache answered but which is then passed through asks the origin for its answer: its
bytes are the origin's, in edgecache_site_served_bytes_total and the access log's upstream, not the peer's.

The case is test_no_hand_offs' doubted hot copy: its owner answers the copy's revalidation with the new version
unstored, so the copy's fill is passed through, one request from this node to the origin (its Via this node's
alone, its X-Forwarded-For the viewer). The fast path and the full handler counted those bytes as the peer's: an
origin's egress told as the cluster's own traffic, on the dashboard an ISP watches for origin offload.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_hot_spread import HOT
from tests.e2e.test_no_hand_offs import doubted_copy_purged
from tests.origin import Origin


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_pass_through_after_a_peers_answer_to_its_fill_is_counted_as_the_origins(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    answer, counted = await doubted_copy_purged(origin, tmp_path, fast)
    assert answer.endswith(b"\r\n\r\n" + b"n" * 60_000)
    passed = origin.seen[-1]  # the pass-through: this node's request, not the owner's
    assert (passed.path, passed.headers.get("Via"), passed.headers.get("Range")) == (HOT, "1.1 edgecache (node)", None)
    served = {k: v for k, v in counted.items() if k[0] == "edgecache_site_served_bytes_total"}
    assert served == {("edgecache_site_served_bytes_total", ("site", "videos"), ("upstream", "origin")): 60_000.0}
