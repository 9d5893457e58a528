"""Several workers on one disk remember, for a while, that an object's answer is not stored.

A cold miss takes the entry's lease before it asks the origin, and a miss in another worker waits for its head
(proxy.revalidating). An answer that may not be stored leaves the waiter nothing to read: it asks the origin itself
after a whole first-byte time of waiting, and it took the lease for its own request, so the next worker's miss
waited on it in turn. Every miss of a popular uncacheable object paid for another's first byte. Now the holder that
learns the answer is not storable leaves a short-lived mark on the disk before it lets go (as Varnish's hit-for-miss
object): the waiter asks at once without the lease, and while the mark is fresh no worker waits for another's
request of that object.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_worker_cold import WARM, cold_at_once
from tests.e2e.test_worker_revalidation import collapsed, each_worker
from tests.origin import Origin

BODY = bytes((i * 11 + i // 253) % 256 for i in range(200_000))
UNSTORED = 'edgecache; fwd=uri-miss; detail="no-store"'


async def test_an_unstorable_answer_is_not_waited_for_by_the_other_worker(origin: Origin, tmp_path: Path) -> None:
    """Round one: worker A's miss holds the lease, B's waits for its head (one collapsed wait), then asks itself.
    Round two, the mark fresh: both ask the origin at once, neither waits (no collapsed wait). Bytes exact."""
    origin.put("/warm", WARM)
    origin.put("/u.bin", BODY, headers={"Cache-Control": "no-store"})
    async with each_worker(tmp_path, origin, "/warm", WARM, pairs=1) as (admin, s, [(a, b)]):
        for rounds, waited in ((1, 1), (2, 0)):
            before = await collapsed(s, admin)
            answers = await cold_at_once(origin, s, admin, [(a, ""), (b, "")], "/u.bin")
            assert [(st, f["cache-status"], body) for st, f, body in answers] == [(200, UNSTORED, BODY)] * 2
            assert (origin.hits["/u.bin"], await collapsed(s, admin) - before) == (2 * rounds, waited)
