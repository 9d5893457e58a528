"""A value's file is removed only once the transaction that deleted its row has committed, so a process killed in
between leaves a file no row names (storage.orphans deletes it at the next start), never a row whose file is gone.

diskcache removes the files of the values a nested call deletes (our transactions: an admission's evictions, a
purge's delete, a new budget's) as that call returns, before the transaction around it commits. A worker killed
there (kill -9, the OOM killer) left the row, which said the value was stored: its slice was answered 502 by the
node's other workers until DiskTier._gone came to drop such rows on a read.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

VALUE = 64 * 1024  # a file of its own (MIN_FILE_SIZE is 32 KiB)

# Three values fill the budget; a fourth's admission evicts one. Every unlink of a value file is the process's last
# act: it is killed at once, as a worker killed at that moment would be.
CHILD = textwrap.dedent(
    f"""
    import asyncio, os, signal, sys
    from pathlib import Path
    from edgecache.storage.disk import DiskTier

    async def main(directory: Path) -> None:
        tier = DiskTier(directory, 3 * {VALUE}, threads=1)
        for n in range(3):
            assert await tier.put(f"v{{n}}", bytes([n]) * {VALUE})
        unlink = os.unlink

        def unlink_then_die(path, *args, **kwargs):
            unlink(path, *args, **kwargs)
            if str(path).endswith(".val"):
                os.kill(os.getpid(), signal.SIGKILL)

        os.unlink = unlink_then_die
        await tier.put("v3", bytes([3]) * {VALUE})

    asyncio.run(main(Path(sys.argv[1])))
    """
)


def _named_files(directory: Path) -> dict[str, str]:
    with sqlite3.connect(directory / "cache.db") as con:
        return dict(con.execute("SELECT key, filename FROM Cache WHERE filename IS NOT NULL").fetchall())


def test_a_process_killed_as_an_evicted_file_is_unlinked_leaves_no_row_without_its_file(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    named = _named_files(tmp_path)
    assert {key for key, filename in named.items() if not (tmp_path / filename).exists()} == set()
    assert len(named) == 2  # one of v0..v2 evicted, for good; v3 never written
    assert set(named) < {"v0", "v1", "v2"}
