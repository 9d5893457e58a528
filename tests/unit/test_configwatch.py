"""configwatch: what counts as a change of the config file, on real files and the real thread."""

from __future__ import annotations

import os
import queue
from pathlib import Path

from edgecache.configwatch import ConfigWatch, stamp

WAIT = 10.0  # seconds a test waits for a call that must come (it comes within a few of the watch's intervals)


def watching(path: Path, calls: queue.Queue[Path | None], fail: list[OSError]) -> ConfigWatch:
    def changed() -> None:
        if fail:
            raise fail.pop()
        calls.put(Path(os.path.realpath(path)))

    return ConfigWatch(str(path), 0.01, changed)


def test_a_change_is_told_once_a_missing_file_is_waited_for_and_a_failed_call_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "edgecache.toml"
    path.write_text("a = 1\n")
    calls: queue.Queue[Path | None] = queue.Queue()
    fail: list[OSError] = []
    watch = watching(path, calls, fail)
    watch.start()
    try:
        (tmp_path / "new.toml").write_text("a = 1\n")
        os.replace(tmp_path / "new.toml", path)  # as an editor saves it: another file, the same size
        assert calls.get(timeout=WAIT) == path
        path.unlink()  # mid-swap: nothing to reload
        (tmp_path / "v2.toml").write_text("a = 3\n")
        fail.append(OSError("pipe full"))
        path.symlink_to("v2.toml")  # the new file: told after the failed call, at the next look
        assert calls.get(timeout=WAIT) == tmp_path / "v2.toml"
        assert not fail
    finally:
        watch.stop()
    assert calls.empty()  # each change told once


def test_the_stamp_follows_symlinks_and_is_none_for_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    (tmp_path / "b").write_text("x")
    link = tmp_path / "link"
    link.symlink_to("a")
    first = stamp(str(link))
    assert first is not None
    assert first[0] == str(tmp_path / "a")
    link.unlink()
    link.symlink_to("b")  # same content and size: another file
    assert stamp(str(link)) not in (None, first)
    assert stamp(str(tmp_path / "missing")) is None
    assert stamp("bad\x00path") is None
