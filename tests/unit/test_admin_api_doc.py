"""docs/admin-api.yaml against the admin app the server really assembles (server._start_admin, on 127.0.0.1):
the same routes, a token required exactly where the guard requires one, every example body accepted by the real
handlers, and the real answers (status, content type, JSON body) as the document describes them."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jsonschema
import pytest
import yaml
from aiohttp import web
from multidict import CIMultiDictProxy
from openapi_spec_validator import validate

from edgecache.admin.auth import PUBLIC
from edgecache.config import Listen, Site, Token
from edgecache.server import _start_admin
from tests.conftest import make_config, start_edge
from tests.e2e.procs import free_port
from tests.origin import Origin

DOC: dict[str, Any] = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs" / "admin-api.yaml").read_text())
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
OPERATOR = "operator-secret-0123456789"
PROVIDER = "videos-provider-secret-0123"
JSON = {"headers": {"Content-Type": "application/json"}}
TOKENS = (Token("ops", OPERATOR, "operator"), Token("videos", PROVIDER, "provider", ("videos",)))


def documented() -> dict[tuple[str, str], dict[str, Any]]:
    """(METHOD, path) -> the operation."""
    return {(m.upper(), path): op for path, item in DOC["paths"].items() for m, op in item.items() if m in METHODS}


@dataclass
class Admin:
    app: web.Application
    url: str

    async def call(
        self, method: str, path: str, token: str | None = OPERATOR, headers: dict[str, str] | None = None, **kw: Any
    ) -> tuple[int, str, bytes, CIMultiDictProxy[str]]:
        """Status, media type (without parameters), body and header fields of one request."""
        fields = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
        async with aiohttp.ClientSession() as s, s.request(method, self.url + path, headers=fields, **kw) as r:
            return r.status, r.content_type, await r.read(), r.headers


@pytest.fixture
async def admin(origin: Origin, tmp_path: Path) -> AsyncIterator[Admin]:
    """A real edge whose sites are the ones the document's examples name, and its admin listener as the server
    starts it (the examples' URLs are filled from `origin`, which answers 404: nothing leaves 127.0.0.1)."""
    videos = Site(name="videos", hosts=("video.example.com",), origins=(origin.url,))
    other = Site(name="other", hosts=("other.example.com",), origins=(origin.url,))
    port = free_port()
    cfg = replace(
        make_config(tmp_path / "cache", [origin.url]),
        sites=(videos, other),
        tokens=TOKENS,
        admin=Listen("127.0.0.1", port),
    )
    async with start_edge(cfg) as edge, contextlib.AsyncExitStack() as stack:
        edge.node.state["listening"] = True  # as server.run marks it once its listeners are up
        runner = await _start_admin(edge.node, edge.runner)
        assert runner is not None
        stack.push_async_callback(runner.cleanup)
        yield Admin(runner.app, f"http://127.0.0.1:{port}")


def check_answer(op: tuple[str, str], status: int, ctype: str, body: bytes) -> None:
    """The status is one the operation documents, with this content type, and a JSON body fits its schema."""
    responses = documented()[op]["responses"]
    assert str(status) in responses, f"{op}: {status} is not documented ({body[:200]!r})"
    response = responses[str(status)]
    if "$ref" in response:
        response = DOC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    assert ctype in response["content"], f"{op} {status}: {ctype} is not documented"
    schema = response["content"][ctype]["schema"]
    instance = json.loads(body) if ctype == "application/json" else body.decode()
    # The whole document is the root, so the schema's $refs to #/components resolve in it.
    jsonschema.Draft202012Validator({**DOC, **schema}).validate(instance)


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"].startswith("3.1.")
    validate(DOC)


async def test_the_document_names_every_route_the_admin_app_serves_and_no_other(admin: Admin) -> None:
    routed = {(r.method, r.resource.canonical) for r in admin.app.router.routes() if r.resource is not None}
    gets = {path for method, path in routed if method == "GET"}
    routed -= {("HEAD", path) for path in gets}  # aiohttp adds HEAD beside every GET
    assert set(documented()) == routed


async def test_a_token_is_required_exactly_where_the_document_says(admin: Admin) -> None:
    for (method, path), op in documented().items():
        public = op.get("security", DOC["security"]) == []
        assert public == (path in PUBLIC), (method, path)
        status, ctype, body, headers = await admin.call(method, path.replace("{id}", "nope"), token=None)
        assert (status == 401) == (not public), (method, path, status)
        check_answer((method, path), status, ctype, body)
        if status == 401:
            assert headers["WWW-Authenticate"] == 'Bearer realm="edgecache"'


def examples(op: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(media type, example name, value) of each example of the operation's request body."""
    content = op.get("requestBody", {}).get("content", {})
    return [(ctype, name, ex["value"]) for ctype, media in content.items() for name, ex in media["examples"].items()]


def query_examples(op: dict[str, Any]) -> dict[str, str]:
    """The example of each of the operation's query parameters."""
    found = {}
    for param in op.get("parameters", []):
        if "$ref" in param:
            param = DOC["components"]["parameters"][param["$ref"].rsplit("/", 1)[1]]
        found[param["name"]] = str(param["example"])
    return found


async def test_every_example_body_is_accepted_by_the_real_handler(admin: Admin) -> None:
    tried = []
    for (method, path), op in documented().items():
        for ctype, name, value in examples(op):
            schema = op["requestBody"]["content"][ctype]["schema"]
            jsonschema.Draft202012Validator({**DOC, **schema}).validate(value)  # the document agrees with itself
            if ctype == "application/json":
                status, got, body, _ = await admin.call(method, path, json=value)
            else:
                query = "?" + urlencode(query_examples(op))
                status, got, body, _ = await admin.call(
                    method, path + query, data=value, headers={"Content-Type": ctype}
                )
            assert status < 300, (method, path, name, status, body)
            check_answer((method, path), status, got, body)
            tried.append((path, ctype, name))
    assert sorted(tried) == [
        ("/prefetch", "application/json", "list"),
        ("/prefetch", "application/json", "options"),
        ("/prefetch", "text/plain", "lines"),
        ("/purge", "application/json", "prefix"),
        ("/purge", "application/json", "site"),
        ("/purge", "application/json", "url"),
        ("/purges/after", "application/json", "pruned"),
        ("/purges/after", "application/json", "vector"),
    ]


async def test_the_real_answers_are_the_documented_ones(admin: Admin, origin: Origin) -> None:
    """Each route's answers that a test can provoke without a cluster: status, content type and body schema."""
    job_url = "http://video.example.com/movies/42/poster.jpg"
    origin.put("/movies/42/poster.jpg", b"jpeg")
    origin.gate = asyncio.Event()  # the job's one fetch is held at the origin: the job runs until cancelled
    status, ctype, body, _ = await admin.call("POST", "/prefetch", json=[job_url])
    assert status == 202
    job = json.loads(body)["id"]
    await origin.wait_for_requests(1)
    probes: list[tuple[str, str, str | None, dict[str, Any], int]] = [
        ("GET", "/healthz", None, {}, 200),
        ("GET", "/readyz", None, {}, 200),
        ("GET", "/metrics", None, {}, 200),
        ("GET", "/ring?url=" + job_url, OPERATOR, {}, 200),
        ("GET", "/ring", OPERATOR, {}, 400),
        ("GET", "/ring?url=http://[::1/", OPERATOR, {}, 400),
        ("GET", "/ring?url=" + job_url + "%2500x", OPERATOR, {}, 400),  # a NUL in the target: it cannot be keyed
        ("GET", "/ring?url=http://elsewhere.example.org/", OPERATOR, {}, 404),
        ("GET", "/ring?url=http://other.example.com/a", PROVIDER, {}, 403),  # another provider's site
        ("GET", "/ring?url=" + job_url, PROVIDER, {}, 200),
        ("POST", "/purge", "not-a-token-of-this-node", {"json": {"site": "videos"}}, 401),
        ("POST", "/purge", PROVIDER, {"json": {"site": "other"}}, 403),
        ("POST", "/purge", OPERATOR, {"json": {"url": "ftp://video.example.com/"}}, 400),
        ("POST", "/purge", OPERATOR, {"data": b"{", **JSON}, 400),
        ("POST", "/purge", OPERATOR, {"data": io.BytesIO(b'{"site": "%s"}' % (b"x" * 2**20)), **JSON}, 413),
        ("POST", "/prefetch", PROVIDER, {"json": ["http://other.example.com/a"]}, 403),
        ("POST", "/prefetch", OPERATOR, {"json": {"urls": [job_url], "concurrency": 65}}, 400),
        ("POST", "/prefetch", OPERATOR, {"data": b"\xff", "headers": {"Content-Type": "text/plain"}}, 400),
        ("GET", "/prefetch", OPERATOR, {}, 200),
        ("GET", "/prefetch", PROVIDER, {}, 200),
        ("GET", f"/prefetch/{job}", OPERATOR, {}, 200),
        ("GET", f"/prefetch/{job}", PROVIDER, {}, 404),  # another's job is not said to exist
        ("GET", "/prefetch/nope", OPERATOR, {}, 404),
        ("DELETE", "/prefetch/nope", OPERATOR, {}, 404),
    ]
    routes = {(method, path) for method, path in documented()}
    for method, target, token, kw, expected in probes:
        status, ctype, body, _ = await admin.call(method, target, token=token, **kw)
        assert status == expected, (method, target, status, body[:300])
        path = target.split("?")[0]
        op = (method, path if (method, path) in routes else "/prefetch/{id}")
        check_answer(op, status, ctype, body)
    # DELETE cancels a running job, which stays listed; a second DELETE forgets it.
    for answer in ({"cancelled": job, "state": "running"}, {"deleted": job, "state": "cancelled"}):
        status, ctype, body, _ = await admin.call("DELETE", f"/prefetch/{job}")
        assert (status, json.loads(body)) == (200, answer)
        check_answer(("DELETE", "/prefetch/{id}"), status, ctype, body)
    assert (await admin.call("GET", f"/prefetch/{job}"))[0] == 404
    origin.gate.set()  # the edge's fill of the cancelled URL ends now, not at its origin read timeout
