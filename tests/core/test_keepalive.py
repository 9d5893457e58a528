"""What each KeepAlive says of its answer's connection and version (core.keepalive): every member, every question."""

from __future__ import annotations

from edgecache.core.keepalive import KeepAlive


def test_each_member_knows_its_connection_and_version() -> None:
    table = {k: (k.persists, k.http10, k.protocol, k.connection, k.closed(), k.unknown_length()) for k in KeepAlive}
    assert table == {
        KeepAlive.OPEN: (True, False, "HTTP/1.1", b"", KeepAlive.CLOSE, (True, KeepAlive.OPEN)),
        KeepAlive.CLOSE: (False, False, "HTTP/1.1", b"Connection: close\r\n", KeepAlive.CLOSE, (True, KeepAlive.CLOSE)),
        KeepAlive.OPEN_10: (
            True, True, "HTTP/1.0", b"Connection: keep-alive\r\n", KeepAlive.CLOSE_10, (False, KeepAlive.CLOSE_10)
        ),
        KeepAlive.CLOSE_10: (False, True, "HTTP/1.0", b"", KeepAlive.CLOSE_10, (False, KeepAlive.CLOSE_10)),
    }  # fmt: skip
    assert [KeepAlive.of(minor, persists) for minor in (0, 1) for persists in (True, False)] == [
        KeepAlive.OPEN_10,
        KeepAlive.CLOSE_10,
        KeepAlive.OPEN,
        KeepAlive.CLOSE,
    ]
    assert KeepAlive.OPEN_10.status_line(206, "Partial Content") == "HTTP/1.0 206 Partial Content\r\n"
    assert KeepAlive("HTTP/1.1 open") is KeepAlive.OPEN  # a member by its value, the attributes set once
