"""The access log writer: lines in order, rotation followed (move, and SIGUSR1-style reopen)."""

from __future__ import annotations

import json
from pathlib import Path

from edgecache.accesslog import AccessLog


def test_lines_rotation_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "access.log"
    log = AccessLog(path)
    for i in range(100):
        log.write({"i": i})
    log.close()
    assert [json.loads(line)["i"] for line in path.read_text().splitlines()] == list(range(100))
    log = AccessLog(path)
    path.rename(tmp_path / "access.log.1")  # logrotate moved it away
    log.reopen()
    log.write({"i": "after"})
    log.close()
    assert path.read_text().splitlines() == ['{"i":"after"}']
    assert len((tmp_path / "access.log.1").read_text().splitlines()) == 100


def test_disabled_log_writes_nothing(tmp_path: Path) -> None:
    log = AccessLog(None)
    log.write({"i": 1})
    log.reopen()
    log.close()
    assert list(tmp_path.iterdir()) == []
