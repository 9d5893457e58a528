"""The runtime directories under the temp dir (worker 0's internal socket, the workers' metrics files) that a node
killed with SIGKILL leaves are removed by the next node to start; a live node's never are, nor anything not made
as one (edgecache.rundirs). Every node here runs with TMPDIR in the test's own directory."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from pathlib import Path

from edgecache.core.rundirs import LOCK, Kind, kind_of
from tests.e2e.procs import descendants, running, states
from tests.e2e.test_watchdog import DATA, Node, get, node, until, write_config
from tests.origin import Origin

LISTENING = "edgecache listening on"


def ours(tmp: Path, planted: Iterable[str] = ()) -> set[str]:
    """The runtime directories of nodes under `tmp`, by name: what the nodes made, not what the test planted."""
    return {p.name for p in tmp.iterdir() if kind_of(p.name) is not None and (p / LOCK).exists()} - set(planted)


def plant(tmp: Path, elsewhere: Path) -> dict[str, str]:
    """What a sweep must leave, each a dead node's directory in all but one respect; what each is, by name."""
    for name, mode in (("other-abcdefgh", 0o700), ("edgecache-mode0755", 0o755), ("edgecache-nolock00", 0o700)):
        (tmp / name).mkdir(mode=mode)
        os.chmod(tmp / name, mode)
        if name != "edgecache-nolock00":  # made before nodes locked them, or being made: not known dead
            (tmp / name / LOCK).write_bytes(b"")
    elsewhere.mkdir(mode=0o700)
    (elsewhere / LOCK).write_bytes(b"")
    (tmp / "edgecache-symlink0").symlink_to(elsewhere)
    (tmp / "edgecache-afile000").write_bytes(b"kept")
    return {p.name: f"{p.is_symlink()} {p.is_dir()} {os.lstat(p).st_mode:o}" for p in tmp.iterdir()}


def looks(tmp: Path, names: dict[str, str]) -> dict[str, str]:
    return {n: f"{(tmp / n).is_symlink()} {(tmp / n).is_dir()} {os.lstat(tmp / n).st_mode:o}" for n in names}


async def killed(n: Node) -> None:
    """SIGKILL to the node's whole process group, as systemd's final kill sends; until every process is gone."""
    tree = descendants(n.proc.pid)
    os.killpg(n.proc.pid, signal.SIGKILL)
    assert await n.proc.wait() == -signal.SIGKILL
    await until(lambda: not any(running(pid) for pid in tree))


async def test_a_killed_nodes_directories_go_at_the_next_start_and_a_live_nodes_stay(
    origin: Origin, tmp_path: Path, short_tmp: Path
) -> None:
    origin.put("/v.bin", DATA)
    tmp = short_tmp
    planted = plant(tmp, tmp_path / "elsewhere")
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    (first, _, _), (second, port2, _), (third, port3, _) = [
        write_config(tmp_path / name, origin, workers=2) for name in ("a", "b", "c")
    ]
    async with node(first, TMPDIR=str(tmp)) as n1:
        await n1.expect(LISTENING, 2)
        dead = ours(tmp, planted)
        assert sorted(kind_of(name) for name in dead) == [Kind.PRIVATE, Kind.METRICS]
        await killed(n1)
    assert ours(tmp, planted) == dead  # left behind: nothing of the node was there to remove them
    async with node(second, TMPDIR=str(tmp)) as n2:
        await n2.expect(LISTENING, 2)
        live = ours(tmp, planted)
        assert not live & dead
        assert len(live) == 2
        await n2.expect(f"removed 2 runtime directories of nodes that died, under {tmp}")
        async with node(third, TMPDIR=str(tmp)) as n3:  # while the second one runs
            await n3.expect(LISTENING, 2)
            assert len(ours(tmp, planted) - live) == 2
            assert live <= ours(tmp, planted)
            assert "runtime directories" not in n3.text
            assert await get(port2, "/v.bin") == (200, DATA)
            assert await get(port3, "/v.bin") == (200, DATA)
            assert origin.hits["/v.bin"] == 2  # one fill each: two caches
            assert await n3.stop() == 0
        assert ours(tmp, planted) == live
        assert await n2.stop() == 0
    assert ours(tmp, planted) == set()
    assert looks(tmp, planted) == planted
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith("edgecache-")) == sorted(
        n for n in planted if n.startswith("edgecache-")
    )
    assert [p.name for p in tmp.iterdir() if p.name.startswith("pymp-")] == []  # the fork server's socket was ours
    assert (tmp / "edgecache-afile000").read_bytes() == b"kept"
    assert (tmp_path / "elsewhere" / LOCK).exists()
    for n in (n1, n2, n3):
        assert "Traceback" not in n.text
        assert not [line for line in n.lines if " WARNING " in line and "runtime director" in line]


async def test_a_worker_that_outlives_its_killed_parent_keeps_the_directories(
    origin: Origin, tmp_path: Path, short_tmp: Path
) -> None:
    """A worker stopped (SIGSTOP) when its parent was killed cannot end with it: it still uses the directories."""
    origin.put("/v.bin", DATA)
    tmp = short_tmp
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, port1, _ = write_config(tmp_path / "a", origin, workers=2)
    second, _, _ = write_config(tmp_path / "b", origin, workers=2)
    async with node(first, TMPDIR=str(tmp)) as n1:
        await n1.expect(LISTENING, 2)
        assert await get(port1, "/v.bin") == (200, DATA)
        dead = ours(tmp)
        assert len(dead) == 2
        stopped, other = n1.pid_of(0), n1.pid_of(1)
        os.kill(stopped, signal.SIGSTOP)
        try:
            n1.proc.send_signal(signal.SIGKILL)
            # Not proc.wait(): that waits for the end of the log pipe too, which the stopped worker holds open.
            await until(
                lambda: not running(n1.proc.pid) and not running(other) and running(stopped),
                lambda: f"({states(parent=n1.proc.pid, other=other, stopped=stopped)}); log:\n{n1.text}",
            )
            async with node(second, TMPDIR=str(tmp)) as n2:
                await n2.expect(LISTENING, 2)
                assert dead <= ours(tmp)
                assert "runtime directories" not in n2.text
                os.kill(stopped, signal.SIGKILL)
                await until(lambda: not running(stopped))
                assert await n2.stop() == 0
        finally:  # never left stopped: it holds the test's pipe
            if running(stopped):
                os.kill(stopped, signal.SIGKILL)
    assert ours(tmp) == dead
    async with node(second, TMPDIR=str(tmp)) as n3:
        await n3.expect(LISTENING, 2)
        assert not ours(tmp) & dead
        assert len(ours(tmp)) == 2
        await n3.expect(f"removed 2 runtime directories of nodes that died, under {tmp}")
        assert await n3.stop() == 0
    assert ours(tmp) == set()
    assert origin.hits["/v.bin"] == 1


async def test_a_temp_dir_too_long_for_the_sockets_is_refused_by_name(
    origin: Origin, tmp_path: Path, short_tmp: Path
) -> None:
    """Its message was "None" (an OSError of multiprocessing's without an errno, binding the fork server's socket),
    after the runtime directory was made."""
    config, _, _ = write_config(tmp_path, origin, workers=2)
    long = short_tmp / ("x" * (70 - len(os.fsencode(short_tmp))))  # 71 bytes: one past core.rundirs' limit
    long.mkdir()
    async with node(config, TMPDIR=str(long)) as n:
        await n.expect(f"ERROR edgecache.supervisor: the temp dir {long} is too long for the node's Unix sockets")
        assert await n.proc.wait() == 1
    assert "Traceback" not in n.text
    assert list(long.iterdir()) == []
