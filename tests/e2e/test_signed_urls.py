"""Signed URLs against the real edge and a counting origin: a request without a valid token gets 403 with its
reason before any lookup, on the fast path too; the token is never keyed nor sent to the origin, so two tokens for
one object make one origin fetch and the same bytes; secrets rotate by reload; `edgecache sign` makes URLs the
edge serves."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from edgecache import config as cfg
from edgecache.config import Config, Listen
from edgecache.core.signing import Refusal, Signing, sign
from edgecache.server import reload, start_internal
from tests.conftest import Edge, make_config, start_edge
from tests.e2e.procs import ROOT
from tests.e2e.test_fast_path import answered, normalised
from tests.e2e.test_hops import cluster, origins, owner_index
from tests.e2e.test_poisoning import DOT_DOT_REFUSED
from tests.origin import Origin
from tests.wire import exchange

SECRET = "new-secret-new-secret"
OLD = "old-secret-old-secret"
BODY = bytes(range(256)) * 64  # 16 KiB
PLAYLIST = b"#EXTM3U\n#EXT-X-TARGETDURATION:4\nseg1.ts\n"
SEGMENT = bytes(range(255, -1, -1)) * 32


def later(seconds: int = 3600) -> int:
    return int(time.time()) + seconds


def signed_config(tmp_path: Path, origin: Origin, fast: bool, signing: Signing) -> Config:
    config = replace(make_config(tmp_path / "cache", [origin.url]), fast_path=fast)
    return replace(config, sites=(replace(config.sites[0], signing=signing),))


@asynccontextmanager
async def signed_edge(tmp_path: Path, origin: Origin, fast: bool, signing: Signing) -> AsyncIterator[Edge]:
    origin.put("/v/a.mp4", BODY)
    origin.put("/v/set/master.m3u8", PLAYLIST, content_type="application/vnd.apple.mpegurl")
    origin.put("/v/set/720p/seg1.ts", SEGMENT, content_type="video/mp2t")
    origin.put("/v/other.ts", SEGMENT, content_type="video/mp2t")
    async with start_edge(signed_config(tmp_path, origin, fast, signing)) as edge:
        yield edge


def head(target: str, *fields: str, method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: video.test", *fields, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    top, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), fields, body


async def get(
    edge: Edge, target: str, *fields: str, source: str = "127.0.0.1", method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    return parse(await exchange(edge.port, head(target, *fields, method=method), source))


def refused(reason: Refusal) -> tuple[int, bytes]:
    return 403, f"{reason}\n".encode()


@pytest.fixture(params=["fast", "framework"])
def fast(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "fast")


async def test_missing_malformed_wrong_and_expired_are_403_and_reach_nothing(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    rules = Signing((SECRET,))
    async with signed_edge(tmp_path, origin, fast, rules) as edge:
        valid = sign(rules, "/v/a.mp4", later())
        signature = valid.rpartition("=")[2]
        cases = {
            "/v/a.mp4": Refusal.MISSING,
            f"/v/a.mp4?expires={later()}": Refusal.MISSING,
            f"/v/a.mp4?expires=soon&signature={signature}": Refusal.MALFORMED,
            f"{valid}&signature={signature}": Refusal.MALFORMED,
            valid.replace("/v/a.mp4", "/v/other.ts"): Refusal.WRONG,
            sign(Signing(("another-sites-secret",)), "/v/a.mp4", later()): Refusal.WRONG,
            # int(time.time()) is never after now: the expiry second itself is refused
            sign(rules, "/v/a.mp4", int(time.time())): Refusal.EXPIRED,
            sign(rules, "/v/a.mp4", int(time.time()) - 86400): Refusal.EXPIRED,
        }
        for target, reason in cases.items():
            status, fields, body = await get(edge, target)
            assert (status, body) == refused(reason), target
            assert fields["cache-status"] == f'edgecache; detail="{reason}"'
        # A request of any method must carry one: a POST without a token is not passed through either
        status, _, body = await get(edge, "/v/a.mp4", "Content-Length: 0", method="POST")
        assert (status, body) == refused(Refusal.MISSING)
        assert sum(origin.hits.values()) == 0
        status, _, body = await get(edge, valid)
        assert (status, body) == (200, BODY)
        assert [s.path for s in origin.seen] == ["/v/a.mp4"]
        # Warm now: the same refusals, whichever path answers
        for target, reason in cases.items():
            assert (await get(edge, target))[::2] == refused(reason), target
        assert origin.hits["/v/a.mp4"] == 1


async def test_two_tokens_for_one_object_make_one_fetch_and_the_same_bytes(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    rules = Signing((SECRET, OLD))
    async with signed_edge(tmp_path, origin, fast, rules) as edge:
        one = sign(rules, "/v/a.mp4?itag=22", later(3600))
        two = sign(Signing((OLD,)), "/v/a.mp4?itag=22", later(7200))  # another expiry, another secret
        assert one.partition("?")[0] == two.partition("?")[0]
        assert one != two
        first = await exchange(edge.port, head(one))
        assert parse(first)[::2] == (200, BODY)
        before = answered()
        hits = [await exchange(edge.port, head(t)) for t in (two, one, two)]
        assert {parse(h)[1]["cache-status"] for h in hits} == {"edgecache; hit"}
        assert len({await normalised(h) for h in hits}) == 1  # byte for byte, Age and Date aside
        assert parse(hits[0])[::2] == (200, BODY)
        assert origin.hits == {"/v/a.mp4?itag=22": 1}
        assert [s.path for s in origin.seen] == ["/v/a.mp4?itag=22"]  # the keyed parameter, never the token
        assert answered() - before == (3 if fast else 0)


async def test_the_origin_never_sees_the_token(origin: Origin, tmp_path: Path, fast: bool) -> None:
    rules = Signing((SECRET,))
    async with signed_edge(tmp_path, origin, fast, rules) as edge:
        target = sign(rules, "/v/a.mp4?itag=22", later())
        set_token = sign(rules, "/v/set/master.m3u8", later(), prefix="/v/set/")
        assert (await get(edge, target, "Cache-Control: no-store"))[::2] == (200, BODY)  # passed through
        assert (await get(edge, target, "Authorization: Bearer x"))[::2] == (200, BODY)  # passed through
        posted = await exchange(edge.port, head(target, "Content-Length: 2", method="POST") + b"hi")
        assert parse(posted)[::2] == (201, b"stored\n")
        assert (await get(edge, set_token))[::2] == (200, PLAYLIST)
        assert [(s.method, s.path) for s in origin.seen] == [
            ("GET", "/v/a.mp4?itag=22"),
            ("GET", "/v/a.mp4?itag=22"),
            ("POST", "/v/a.mp4?itag=22"),
            ("GET", "/v/set/master.m3u8"),
        ]


async def test_one_prefix_token_covers_a_segment_set_and_nothing_outside(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    rules = Signing((SECRET,))
    async with signed_edge(tmp_path, origin, fast, rules) as edge:
        token = sign(rules, "/v/set/", later(), prefix="/v/set/").partition("?")[2]
        for _ in range(2):  # a fill, then a hit
            assert (await get(edge, f"/v/set/master.m3u8?{token}"))[::2] == (200, PLAYLIST)
            assert (await get(edge, f"/v/set/720p/seg1.ts?{token}"))[::2] == (200, SEGMENT)
        for outside in ("/v/other.ts", "/v/set/../other.ts", "/v/setx.ts"):
            assert (await get(edge, f"{outside}?{token}"))[::2] == refused(Refusal.OUTSIDE), outside
        assert origin.hits == {"/v/set/master.m3u8": 1, "/v/set/720p/seg1.ts": 1}


async def test_an_encoded_slash_never_takes_a_prefix_token_outside_its_prefix(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    # '/v/set/..%2F..%2Fother.ts' starts with '/v/set/' as it stands, but an origin that decodes %2F (or takes '\\'
    # for '/', or drops a segment's ';' parameters) before resolving '..' (nginx, IIS, Tomcat) serves /v/other.ts for
    # it: outside the prefix the token names.
    rules = Signing((SECRET,))
    async with signed_edge(tmp_path, origin, fast, rules) as edge:
        token = sign(rules, "/v/set/", later(), prefix="/v/set/").partition("?")[2]
        outside_paths = ("/v/set/..%2F..%2Fother.ts", "/v/set/..%2f..%5Cother.ts", "/v/set/..\\..\\other.ts")
        for outside in (*outside_paths, "/v/set/..;/..;/other.ts"):  # Tomcat's path parameters: '..;' is '..'
            status, _, body = await get(edge, f"{outside}?{token}")
            assert (status, body) == (400, DOT_DOT_REFUSED)
    assert origin.seen == []


async def test_tokens_bound_to_the_client_address(origin: Origin, tmp_path: Path, fast: bool) -> None:
    rules = Signing((SECRET,), client=True)
    async with signed_edge(tmp_path, origin, fast, rules) as edge:
        mine = sign(rules, "/v/a.mp4", later(), client="127.0.0.1")
        assert (await get(edge, mine, source="127.0.0.2"))[::2] == refused(Refusal.WRONG)
        assert sum(origin.hits.values()) == 0
        for _ in range(3):  # a fill, then hits (the fast path's remembered answer to these very head bytes)
            assert (await get(edge, mine))[::2] == (200, BODY)
        before = answered()
        # The same head from another address: the remembered answer is not this client's
        assert (await get(edge, mine, source="127.0.0.2"))[::2] == refused(Refusal.WRONG)
        assert (await get(edge, mine, "Range: bytes=0-9", source="127.0.0.2"))[::2] == refused(Refusal.WRONG)
        assert answered() - before == (2 if fast else 0)  # refused on the fast path (core.admit)
        assert (await get(edge, mine, "Range: bytes=0-9"))[::2] == (206, BODY[:10])
        assert origin.hits == {"/v/a.mp4": 1}


async def test_the_fast_path_refuses_a_warm_object_and_answers_a_valid_token(origin: Origin, tmp_path: Path) -> None:
    rules = Signing((SECRET,))
    async with signed_edge(tmp_path, origin, True, rules) as edge:
        valid = sign(rules, "/v/a.mp4", later())
        assert (await get(edge, valid))[::2] == (200, BODY)
        await edge.node.engine.flush()
        before = answered()
        assert (await get(edge, "/v/a.mp4"))[::2] == refused(Refusal.MISSING)
        assert (await get(edge, valid[:-1] + ("A" if valid[-1] != "A" else "B")))[::2] == refused(Refusal.WRONG)
        assert answered() == before + 2  # refused here, as the full handler refuses them (core.admit)
        assert (await get(edge, valid))[::2] == (200, BODY)
        assert (await get(edge, valid, "Range: bytes=100-199"))[::2] == (206, BODY[100:200])
        assert answered() == before + 4
        assert origin.hits == {"/v/a.mp4": 1}


async def test_both_paths_answer_signed_requests_byte_for_byte_alike(origin: Origin, tmp_path: Path) -> None:
    rules = Signing((SECRET,))
    valid = sign(rules, "/v/a.mp4", later())
    prefix = sign(rules, "/v/set/", later(), prefix="/v/set/").partition("?")[2]
    cases = [
        (head(valid), True),
        (head(valid, method="HEAD"), True),
        (head(valid, "Range: bytes=5-9"), True),
        (head(f"/v/set/master.m3u8?{prefix}"), True),
        # Refused, here as by the full handler (core.admit)
        (head("/v/a.mp4"), True),
        (head("/v/a.mp4", method="HEAD"), True),
        (head(valid.replace("expires=", "expires=0")), True),  # another expiry, the same signature
        (head(sign(rules, "/v/a.mp4", int(time.time()) - 1)), True),
        (head(valid + "&expires=1"), True),
        (head(f"/v/other.ts?{prefix}"), True),
        (head(f"/v/other.ts?{prefix}", "Range: bytes=5-9"), True),
        (head(valid.replace("/v/a.mp4", "/v/./a.mp4")), True),  # the same path, normalised
    ]
    async with AsyncExitStack() as stack:
        edges = []
        for name, fast in (("fast", True), ("framework", False)):
            edge = await stack.enter_async_context(signed_edge(tmp_path / name, origin, fast, rules))
            for warm in (valid, f"/v/set/master.m3u8?{prefix}"):
                assert (await get(edge, warm))[0] == 200
            edges.append(edge)
        for data, fast_answers in cases:
            before = answered()
            ours, theirs = await exchange(edges[0].port, data), await exchange(edges[1].port, data)
            assert await normalised(ours) == await normalised(theirs), data
            assert answered() - before == (1 if fast_answers else 0), data
    assert origin.hits == {"/v/a.mp4": 2, "/v/set/master.m3u8": 2}  # one fill per edge


CONFIG = """
[cache]
dir = "cache"
memory = "64MiB"
disk = "1GiB"

[[sites]]
name = "videos"
hosts = ["video.test"]
origins = ["{origin}"]

[sites.signing]
secrets = {secrets}
"""


def write_config(path: Path, origin: Origin, secrets: list[str]) -> None:
    path.write_text(CONFIG.format(origin=origin.url, secrets=str(secrets).replace("'", '"')))


async def test_a_removed_secret_is_refused_after_a_reload(origin: Origin, tmp_path: Path, fast: bool) -> None:
    origin.put("/v/a.mp4", BODY)
    path = tmp_path / "edgecache.toml"
    write_config(path, origin, [SECRET, OLD])
    config = replace(cfg.load(path), listen=(Listen("127.0.0.1", 0),), fast_path=fast)
    async with start_edge(config) as edge:
        site = edge.node.config.sites[0]
        assert site.signing is not None
        old = sign(Signing((OLD,)), "/v/a.mp4", later())
        new = sign(site.signing, "/v/a.mp4", later())
        for _ in range(2):
            assert (await get(edge, old))[::2] == (200, BODY)
            assert (await get(edge, new))[::2] == (200, BODY)
        write_config(path, origin, [SECRET])
        assert await reload(edge.node)
        assert (await get(edge, old))[::2] == refused(Refusal.WRONG)
        assert (await get(edge, new))[::2] == (200, BODY)
        assert origin.hits == {"/v/a.mp4": 1}


async def sign_cli(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgecache", "sign", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    return out.decode().strip()


async def test_edgecache_sign_makes_urls_the_edge_serves(origin: Origin, tmp_path: Path) -> None:
    origin.put("/v/a.mp4", BODY)
    origin.put("/v/set/720p/seg1.ts", SEGMENT)
    path = tmp_path / "edgecache.toml"
    write_config(path, origin, [SECRET, OLD])
    config = replace(cfg.load(path), listen=(Listen("127.0.0.1", 0),))
    async with start_edge(config) as edge:
        url = await sign_cli("http://video.test/v/a.mp4", "--expires", "1h", "--config", str(path))
        assert url.startswith("http://video.test/v/a.mp4?expires=")
        assert (await get(edge, url.removeprefix("http://video.test")))[::2] == (200, BODY)
        seg = await sign_cli(
            "/v/set/720p/seg1.ts", "--site", "videos", "--expires", "90s", "--prefix", "/v/set/", "--config", str(path)
        )
        assert seg.startswith("/v/set/720p/seg1.ts?prefix=/v/set/&expires=")
        assert (await get(edge, seg))[::2] == (200, SEGMENT)
        assert origin.hits == {"/v/a.mp4": 1, "/v/set/720p/seg1.ts": 1}


async def test_in_a_cluster_the_node_the_viewer_reaches_checks_the_token(tmp_path: Path) -> None:
    """The node a viewer connects to checks its token, for its address; the owner it forwards to takes that node's
    word (the authenticated hop, core.hop), as it does for the site's ACL; no origin is sent the token."""
    rules = Signing((SECRET,), client=True)
    async with origins() as origs, cluster(origs, tmp_path, {"signing": rules}) as nodes:
        path = next(p for p in (f"/v/{i}.ts" for i in range(100)) if owner_index(p) == 1)
        for o in origs:
            o.put(path, SEGMENT)
        token = sign(rules, path, later(), client="127.0.0.2")
        for viewer in ("127.0.0.3", "127.0.0.2", "127.0.0.2"):
            status, _, body = await get(nodes[0], token, source=viewer)
            expected = (200, SEGMENT) if viewer == "127.0.0.2" else refused(Refusal.WRONG)
            assert (status, body) == expected, viewer
        for node in nodes:
            assert (await get(node, token, source="127.0.0.3"))[::2] == refused(Refusal.WRONG)
            assert (await get(node, token, source="127.0.0.2"))[::2] == (200, SEGMENT)
            assert (await get(node, path, source="127.0.0.2"))[::2] == refused(Refusal.MISSING)
        assert [o.hits[path] for o in origs] == [0, 1, 0]
        assert [s.path for s in origs[1].seen] == [path]


async def internal_get(socket_path: Path, target: str) -> tuple[int, bytes]:
    """A request on the node's own Unix socket, the way its prefetch jobs fetch (server.start_internal)."""
    connector = aiohttp.UnixConnector(path=str(socket_path))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"http://edge{target}", headers={"Host": "video.test"}) as r,
    ):
        return r.status, await r.read()


async def test_the_nodes_own_prefetch_needs_no_token_and_its_owner_takes_its_word(tmp_path: Path) -> None:
    """A prefetch job (authorised by its admin token) fetches through the node's own socket without a token; a URL
    another node owns is forwarded there and filled once, and viewers then need a token for it as ever."""
    rules = Signing((SECRET,))
    async with origins() as origs, cluster(origs, tmp_path, {"signing": rules}) as nodes:
        paths = [next(p for p in (f"/v/{i}.ts" for i in range(100)) if owner_index(p) == n) for n in (0, 1)]
        for o in origs:
            for p in paths:
                o.put(p, SEGMENT)
        internal = await start_internal(nodes[0].runner, tmp_path)
        for p in paths:
            assert await internal_get(internal, p) == (200, SEGMENT)
            assert (await get(nodes[2], p))[::2] == refused(Refusal.MISSING)
            assert (await get(nodes[2], sign(rules, p, later())))[::2] == (200, SEGMENT)
        assert [dict(o.hits) for o in origs] == [{paths[0]: 1}, {paths[1]: 1}, {}]


async def test_a_request_refused_before_it_has_a_key_is_logged_without_the_token(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """A request refused before it has a key is logged with its target as sent, which held a valid token: now less
    every parameter a site never keys, whichever path refused it (a target with an encoded NUL, a GET the fast path
    refuses and a POST the full handler does; a Host no site serves; a Host that is no host name)."""
    rules = Signing((SECRET,))
    config = replace(signed_config(tmp_path, origin, fast, rules), access_log=tmp_path / "access.log")
    target = sign(rules, "/v/a.mp4?itag=22", later())
    token = target.split("?", 1)[1].replace("itag=22&", "")
    assert "signature=" in token

    def sent_to(host: str, method: str = "GET") -> bytes:
        return head(target + "&x=%00", method=method).replace(b"Host: video.test", f"Host: {host}".encode())

    async with start_edge(config) as edge:
        answers = [
            parse(await exchange(edge.port, raw, "127.0.0.1"))[0]
            for raw in (
                sent_to("video.test"),
                sent_to("video.test", "POST"),
                sent_to("elsewhere.test"),
                sent_to("bad host"),
                head(f"/v/a.mp4?%73ignature=x&{token}&x=%00"),  # a name percent-encoded is the same name
            )
        ]
    assert answers == [400, 400, 421, 400, 400]
    log = (tmp_path / "access.log").read_text()
    assert "signature" not in log, log
    assert "expires" not in log, log
    lines = [json.loads(x) for x in log.splitlines()]
    assert [(x["status"], x["method"], x["site"], x["path"]) for x in lines] == [
        (400, "GET", "videos", "/v/a.mp4?itag=22&x=%00"),
        (400, "POST", "videos", "/v/a.mp4?itag=22&x=%00"),
        (421, "GET", "-", "/v/a.mp4?itag=22&x=%00"),
        (400, "GET", "-", "/v/a.mp4?itag=22&x=%00"),
        (400, "GET", "videos", "/v/a.mp4?x=%00"),
    ]


async def test_a_referer_holding_a_signed_url_is_logged_without_its_token(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """A player page served under a signed URL (a prefix token, say) makes the browser send that URL as the
    Referer of every request it makes of the same host: the line's referer keeps all but the token's parameters,
    on a miss, a hit and a refusal alike."""
    rules = Signing((SECRET,))
    origin.put("/v/a.mp4", BODY)
    config = replace(signed_config(tmp_path, origin, fast, rules), access_log=tmp_path / "access.log")
    page = "http://video.test" + sign(rules, "/v/player.html?lang=en", later())
    assert "signature=" in page
    async with start_edge(config) as edge:
        target = sign(rules, "/v/a.mp4", later())
        for sent in (target, target, "/v/a.mp4"):
            await get(edge, sent, f"Referer: {page}")
    lines = [json.loads(x) for x in (tmp_path / "access.log").read_bytes().splitlines()]
    assert [(x["status"], x["cache"], x["referer"]) for x in lines] == [
        (200, "miss", "http://video.test/v/player.html?lang=en"),
        (200, "hit", "http://video.test/v/player.html?lang=en"),
        (403, "error", "http://video.test/v/player.html?lang=en"),
    ]


async def test_the_access_log_never_holds_the_token(origin: Origin, tmp_path: Path, fast: bool) -> None:
    """Whoever reads the log must not be able to replay a viewer's URL: the line names the target without the
    signed URL's parameters (the rest of its query stays), whichever path answered: a miss, a hit, a pass-through."""
    rules = Signing((SECRET,))
    origin.put("/v/a.mp4", BODY)
    config = replace(signed_config(tmp_path, origin, fast, rules), access_log=tmp_path / "access.log")
    async with start_edge(config) as edge:
        target = sign(rules, "/v/a.mp4?itag=22", later())
        for extra in ((), (), ("Cache-Control: no-store",)):
            assert (await get(edge, target, *extra))[::2] == (200, BODY)
    lines = [json.loads(x) for x in (tmp_path / "access.log").read_bytes().splitlines()]
    assert [(x["path"], x["cache"]) for x in lines] == [
        ("/v/a.mp4?itag=22", "miss"),
        ("/v/a.mp4?itag=22", "hit"),
        ("/v/a.mp4?itag=22", "pass"),
    ]
