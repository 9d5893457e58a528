"""core.popularity.Gate: its counts hold at most their budget of bytes, however long the keys."""

from __future__ import annotations

from edgecache.core.popularity import ENTRY_BYTES, Gate


def test_a_scan_of_long_keys_holds_the_budget_and_a_key_asked_throughout_stays_hot() -> None:
    gate = Gate(threshold=3, window=10.0, capacity=100, budget=10 * (1000 + ENTRY_BYTES))
    for i in range(50):
        gate.asked(f"{i:04d}" + "x" * 996, 1.0)
        if i % 4 == 0:
            gate.asked("hot", 1.0)
        assert gate.bytes == sum(len(k) + ENTRY_BYTES for k in gate._counts) <= gate.budget
    assert len(gate) == 10  # "hot" and the last 9 long keys
    assert gate.hot("hot", 2.0)
    assert not gate.hot("0000" + "x" * 996, 2.0)  # dropped: it counts anew
    assert gate.asked("0000" + "x" * 996, 2.0) is False
    short = Gate(threshold=3, window=10.0, capacity=4)
    for i in range(10):
        short.asked(str(i), 1.0)
    assert (len(short), short.bytes) == (4, 4 * (1 + ENTRY_BYTES))  # the count bounds short keys, as before
