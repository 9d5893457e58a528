"""A fast-path connection's attributes fit CPython's shared-key instance dicts (at most 29 in 3.11: a 30th makes each
connection's dict a table of its own), which its every attribute read on every answer is specialised for: the 30th,
tried once (rangecut.Splitter, now kept by client in Decider.splitters), cost each answer about 0.5 µs
(loadtest.hitcpu --whole). A state that needs a new attribute can share an object with one it goes with."""

from __future__ import annotations

import sys
from typing import cast

from edgecache.proxy.fastpath import FastPath
from edgecache.proxy.fastserver import FastServer

SHARED_KEYS_MOST = 29


async def test_a_connection_keeps_its_attributes_in_a_shared_key_dict() -> None:
    conn = FastPath(cast(FastServer, object()))  # __init__ reads nothing of its server
    other = FastPath(cast(FastServer, object()))
    assert len(vars(conn)) <= SHARED_KEYS_MOST
    # and so its dict is the small one shared keys give (a table of its own takes over a kilobyte)
    assert sys.getsizeof(vars(other)) < 512
