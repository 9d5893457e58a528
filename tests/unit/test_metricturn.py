"""Increments summed over a turn of the event loop (edgecache.metricturn) reach Prometheus exactly: the same samples
as direct increments, at the next turn, and at once where no loop runs."""

from __future__ import annotations

import asyncio
import math
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram

from edgecache.metricturn import TurnBundle, TurnCounter, TurnHistogram, apply

BOUNDS = (0.001, 0.01, 0.1, 1.0)
# Below, on and between the bounds, past the last, zero and negative (the client takes them too).
OBSERVED = [0.0, 0.0005, 0.001, 0.001, 0.002, 0.01, 0.05, 0.1, 0.5, 1.0, 1.5, 99.0, -1.0]


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def pair() -> tuple[CollectorRegistry, CollectorRegistry, TurnHistogram, Histogram, TurnCounter, Counter]:
    batched, direct = CollectorRegistry(), CollectorRegistry()
    hist = TurnHistogram(Histogram("t_seconds", "t", ["k"], buckets=BOUNDS, registry=batched))
    plain_hist = Histogram("t_seconds", "t", ["k"], buckets=BOUNDS, registry=direct)
    count = TurnCounter(Counter("c_total", "c", ["k"], registry=batched))
    plain_count = Counter("c_total", "c", ["k"], registry=direct)
    return batched, direct, hist, plain_hist, count, plain_count


def test_a_turns_increments_reach_the_metric_at_the_next_turn_as_direct_ones_would() -> None:
    batched, direct, hist, plain_hist, count, plain_count = pair()

    async def turn() -> None:
        for v in OBSERVED:
            hist.labels("a").observe(v)
            plain_hist.labels("a").observe(v)
            count.labels("a").inc(v if v > 0 else 1)
            plain_count.labels("a").inc(v if v > 0 else 1)
        count.labels("b").inc(0)
        plain_count.labels("b").inc(0)
        assert samples(batched)[("c_total", (("k", "a"),))] == 0.0  # pending until the next turn
        await asyncio.sleep(0)
        assert samples(batched) == samples(direct)
        hist.labels("a").observe(0.003)  # a second turn adds to the first
        plain_hist.labels("a").observe(0.003)
        await asyncio.sleep(0)
        assert samples(batched) == samples(direct)

    asyncio.run(turn())
    assert samples(batched)[("t_seconds_count", (("k", "a"),))] == len(OBSERVED) + 1


def test_an_increment_where_no_loop_runs_is_applied_at_once() -> None:
    batched, direct, hist, plain_hist, count, plain_count = pair()
    count.labels("a").inc(3)
    plain_count.labels("a").inc(3)
    hist.labels("a").observe(0.02)
    plain_hist.labels("a").observe(0.02)
    assert samples(batched) == samples(direct)


def test_what_a_closed_loop_left_is_applied_by_the_next_loop_or_by_apply() -> None:
    batched, direct, _, _, count, plain_count = pair()

    def leave(n: int) -> None:
        loop = asyncio.new_event_loop()
        loop.call_soon(count.labels("a").inc, n)
        loop.call_soon(loop.stop)  # stops at the end of this turn: the increment is still pending
        loop.run_forever()
        loop.close()

    leave(5)
    assert samples(batched)[("c_total", (("k", "a"),))] == 0.0
    leave(7)  # this loop's first increment applies the 5
    assert samples(batched)[("c_total", (("k", "a"),))] == 5.0
    apply()
    plain_count.labels("a").inc(12)
    assert samples(batched) == samples(direct)


def test_a_negative_increment_is_refused_as_the_client_refuses_it() -> None:
    _, _, _, _, count, _ = pair()
    for where in ("loop", "none"):
        try:
            if where == "loop":
                asyncio.run(_inc(count, -1))
            else:
                count.labels("a").inc(-1)
        except ValueError:
            continue
        raise AssertionError(f"a negative increment was taken ({where})")


async def _inc(count: TurnCounter, n: float) -> None:
    count.labels("a").inc(n)


def test_nan_is_in_no_bucket_as_the_client_has_it() -> None:
    batched, direct, hist, plain_hist, _, _ = pair()

    async def turn() -> None:
        for v in (float("nan"), 0.5):
            hist.labels("a").observe(v)
            plain_hist.labels("a").observe(v)
        await asyncio.sleep(0)

    asyncio.run(turn())
    got, want = samples(batched), samples(direct)
    total = ("t_seconds_sum", (("k", "a"),))
    assert math.isnan(got[total])
    assert math.isnan(want[total])
    del got[total], want[total]
    assert got == want
    assert got[("t_seconds_count", (("k", "a"),))] == 1.0


def test_a_child_that_fails_to_apply_leaves_the_others_counting() -> None:
    batched, _, _, _, count, _ = pair()
    broken = TurnCounter(Counter("b_total", "b", registry=CollectorRegistry()))
    broken._metric = None  # type: ignore[assignment]  # its apply() raises

    async def turn() -> None:
        broken.inc()
        count.labels("a").inc(2)
        await asyncio.sleep(0)
        count.labels("a").inc(3)
        await asyncio.sleep(0)

    asyncio.run(turn())
    assert samples(batched)[("c_total", (("k", "a"),))] == 5.0


def test_an_increment_from_another_thread_while_the_loops_turn_is_pending_is_applied_at_once() -> None:
    """The loop's own increments wait for its next turn; a disk thread's, of the same child in the same turn, go to
    the child at once (their sum is never written by two threads)."""
    batched, _, _, _, count, _ = pair()
    child = count.labels("a")
    seen: list[float] = []

    async def main() -> None:
        child.inc(1)
        worker = threading.Thread(target=child.inc, args=(2,))
        worker.start()
        worker.join()
        seen.append(samples(batched)[("c_total", (("k", "a"),))])
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen.append(samples(batched)[("c_total", (("k", "a"),))])

    asyncio.run(main())
    assert seen == [2.0, 3.0]


def _bundled(hist: TurnHistogram, count: TurnCounter) -> TurnBundle:
    return TurnBundle((count.labels("a"), count.labels("b")), hist.labels("x"), (count.labels("c"), count.labels("d")))


def _direct(plain_hist: Histogram, plain_count: Counter, seconds: float, first: float, second: float) -> None:
    """What a bundle's add() stands for, made of the client's own calls."""
    plain_count.labels("a").inc()
    plain_count.labels("b").inc()
    plain_hist.labels("x").observe(seconds)
    plain_count.labels("c").inc(first)
    plain_count.labels("d").inc(second)


def test_a_bundle_reaches_each_of_its_children_at_the_next_turn_as_their_own_calls_would() -> None:
    """Every child: one left out of apply(), or counted twice, changes a sample."""
    batched, direct, hist, plain_hist, count, plain_count = pair()
    bundle = _bundled(hist, count)

    async def turn() -> None:
        for i, v in enumerate(OBSERVED):
            bundle.add(v, 4096 * i, i % 3)
            _direct(plain_hist, plain_count, v, 4096 * i, i % 3)
        count.labels("a").inc(2)  # the child's own increments, in the same turn, add to the bundle's
        plain_count.labels("a").inc(2)
        assert samples(batched)[("c_total", (("k", "a"),))] == 0.0  # pending until the next turn
        await asyncio.sleep(0)
        assert samples(batched) == samples(direct)
        bundle.add(0.003, 7, 0)  # a second turn adds to the first
        _direct(plain_hist, plain_count, 0.003, 7, 0)
        await asyncio.sleep(0)
        assert samples(batched) == samples(direct)

    asyncio.run(turn())
    got = samples(batched)
    assert got[("c_total", (("k", "b"),))] == len(OBSERVED) + 1
    assert got[("t_seconds_count", (("k", "x"),))] == len(OBSERVED) + 1
    assert got[("c_total", (("k", "c"),))] == 4096 * sum(range(len(OBSERVED))) + 7


def test_a_bundle_where_no_loop_runs_is_applied_at_once() -> None:
    batched, direct, hist, plain_hist, count, plain_count = pair()
    _bundled(hist, count).add(0.02, 100, 5)
    _direct(plain_hist, plain_count, 0.02, 100, 5)
    assert samples(batched) == samples(direct)
    assert samples(batched)[("c_total", (("k", "d"),))] == 5.0


def test_a_bundles_negative_amount_is_refused_as_the_client_refuses_it() -> None:
    _, _, hist, _, count, _ = pair()
    bundle = _bundled(hist, count)
    for first, second in ((-1, 0), (0, -1)):
        try:
            bundle.add(0.1, first, second)
        except ValueError:
            continue
        raise AssertionError(f"a negative amount was taken: {first}, {second}")
