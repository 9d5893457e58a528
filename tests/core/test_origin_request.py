"""What is keyed is what is fetched, over generated client requests.

A generated request is a target form (origin or absolute), a Host spelling (case, port, trailing dot), a query
(repeated, unkeyed, empty and percent-encoded items) and request fields (extra ones, Vary'd ones in odd
spellings). Two properties hold for every pair and every single request:
- two requests with the same entry key yield byte-identical origin requests;
- the entry key an answer is stored under (computed from the fields actually sent) is the entry key of the
  request that caused it: the request the origin saw is the request the key names.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecache.core.forward import (
    CLAIMED_ADDRESS,
    OriginRequest,
    Validator,
    check_forward_field,
    fill_request,
    pass_request,
)
from edgecache.core.headers import Headers
from edgecache.core.keys import BadTarget, CacheKey, PrimaryRecord, entry_key, make_key, varied
from edgecache.core.route import normalise_host

SITE_HOSTS = ("video.test", "cdn.test")
KEEP = (("*",), ("itag",), ("itag", "b"), ())
VARY = (("accept-encoding",), ("x-device", "accept-language"), (), ("cookie",), ("range", "x-device"))


@dataclass(frozen=True)
class Client:
    host_field: str
    target: str  # origin-form or absolute-form, as written
    headers: Headers


def _host() -> st.SearchStrategy[str]:
    name = st.sampled_from(SITE_HOSTS).flatmap(
        lambda h: st.sampled_from((h, h.upper(), h.title(), h + ".", h.upper() + "."))
    )
    port = st.sampled_from(("", ":80", ":8080", ":6666"))
    return st.builds(lambda n, p: n + p, name, port)


_PCT = st.sampled_from(("%41", "%7e", "%7E", "%2f", "%25", "%", "+", "%20", "~", "a"))
_WORD = st.text(alphabet="abAB12-._", min_size=0, max_size=3)
_PART = st.lists(st.one_of(_WORD, _PCT), max_size=3).map("".join)
_ITEM = st.one_of(
    st.builds(lambda n, v: f"{n}={v}", st.sampled_from(("itag", "b", "lang", "a", "%69tag")), _PART),
    st.sampled_from(("itag", "a", "a=", "", "itag=", "b=1=2")),
)
_QUERY = st.lists(_ITEM, max_size=5).map("&".join)
_PATH = st.lists(st.one_of(_WORD, _PCT, st.sampled_from((".", "..", "%2e"))), min_size=1, max_size=4).map(
    lambda segs: "/" + "/".join(segs)
)
_FIELD_NAMES = ("Accept-Encoding", "accept-encoding", "X-Device", "Accept-Language", "Cookie", "X-Evil", "Range")
_FIELD_VALUES = st.sampled_from(("gzip", "GZIP, br", " gzip ,br ", "", "a,  b", 'a "x,  y"', "en;q=0.5", "1"))
_FIELDS = st.lists(st.tuples(st.sampled_from(_FIELD_NAMES), _FIELD_VALUES), max_size=5).map(tuple)


@st.composite
def clients(draw: st.DrawFn) -> Client:
    host = draw(_host())
    path, query = draw(_PATH), draw(_QUERY)
    origin_form = path + ("?" + query if query or draw(st.booleans()) else "")
    if draw(st.booleans()):  # absolute form: its authority wins, the Host field is anything
        return Client(draw(st.sampled_from(("other.example", host))), f"http://{host}{origin_form}", draw(_FIELDS))
    return Client(host, origin_form, draw(_FIELDS))


@st.composite
def respelled(draw: st.DrawFn, client: Client) -> Client:
    """The same request as another client may write it: Host spelling and target form, unkeyed parameters,
    fields the key holds no value of, and the Vary'd ones in other whitespace and case."""
    origin_form = client.target.split("/", 3)[3] if client.target.startswith("http://") else client.target[1:]
    host = normalise_host(client.target[7:].split("/")[0] if client.target.startswith("http://") else client.host_field)
    if host is None:
        return client
    spelling = draw(st.sampled_from((host, host.upper() + ".", host + ":6666", host.title() + ".:80")))
    extra = draw(st.sampled_from(("", "lang=EVIL", "utm=1&&", "zz")))
    target = "/" + origin_form
    if extra:
        target += ("&" if "?" in target else "?") + extra
    fields = tuple(
        (draw(st.sampled_from((k, k.upper(), k.lower()))), draw(st.sampled_from((v, f"  {v} ", v.replace(",", " , ")))))
        for k, v in client.headers
    ) + draw(st.sampled_from(((), (("X-Evil", "1"),), (("X-Forwarded-Host", "evil.example"),))))
    if draw(st.booleans()):
        return Client("other.example", f"http://{spelling}{target}", fields)
    return Client(spelling, target, fields)


def key_of(client: Client, keep: tuple[str, ...]) -> CacheKey | None:
    """The handler's _route and key, without the framework: the authority of an absolute target wins."""
    if client.target.startswith("http://"):
        authority, _, rest = client.target[len("http://") :].partition("/")
        host, target = normalise_host(authority), "/" + rest
    else:
        host, target = normalise_host(client.host_field), client.target
    if host is None:
        return None
    try:
        return make_key("videos", host, target, keep)
    except BadTarget:
        return None


def fill_of(key: CacheKey, vary: tuple[str, ...], client: Client, origin_host: str | None) -> OriginRequest:
    return fill_request(key, varied(vary, client.headers), origin_host, (0, 1023), Validator('"v1"', None))


def stored_under(key: CacheKey, record: PrimaryRecord, sent: OriginRequest) -> str:
    """The entry key engine._head gives the answer: made from the fields the fill sent."""
    return entry_key(key.primary, record, sent.headers)


@given(st.data(), clients(), st.sampled_from(KEEP), st.sampled_from(VARY), st.sampled_from((None, "o.internal")))
def test_same_entry_key_same_origin_request(
    data: st.DataObject, a: Client, keep: tuple[str, ...], vary: tuple[str, ...], origin_host: str | None
) -> None:
    b = data.draw(st.one_of(respelled(a), clients()))
    ka, kb = key_of(a, keep), key_of(b, keep)
    if ka is None or kb is None:
        return
    record = PrimaryRecord("g1", vary)
    if entry_key(ka.primary, record, a.headers) != entry_key(kb.primary, record, b.headers):
        return
    assert fill_of(ka, vary, a, origin_host) == fill_of(kb, vary, b, origin_host)


@given(clients(), st.sampled_from(KEEP), st.sampled_from(VARY), st.sampled_from((None, "o.internal")))
def test_an_answer_is_stored_under_the_key_of_what_was_sent(
    client: Client, keep: tuple[str, ...], vary: tuple[str, ...], origin_host: str | None
) -> None:
    key = key_of(client, keep)
    if key is None:
        return
    record = PrimaryRecord("g1", vary)
    sent = fill_of(key, vary, client, origin_host)
    assert stored_under(key, record, sent) == entry_key(key.primary, record, client.headers)
    # The origin was asked for the key's host and target and nothing the client wrote beside them.
    assert sent.target == key.target
    assert sent.headers[0] == ("Host", origin_host or key.host)
    sent_names = {name.lower() for name, _ in sent.headers}
    assert sent_names <= {"host", "via", "range", "if-none-match", *vary}
    # Re-keying what was sent gives the same key: the target needs no further normalisation.
    assert make_key("videos", key.host, sent.target, keep).primary == key.primary


@given(clients(), clients(), st.sampled_from(KEEP), st.sampled_from(VARY))
def test_an_answer_for_other_fields_is_never_stored_under_this_key(
    a: Client, b: Client, keep: tuple[str, ...], vary: tuple[str, ...]
) -> None:
    """Where an answer to `b`'s fill is stored, `a` finds it only if `a`'s fill would have sent the same bytes."""
    ka, kb = key_of(a, keep), key_of(b, keep)
    if ka is None or kb is None:
        return
    record = PrimaryRecord("g1", vary)
    sent_b = fill_of(kb, vary, b, None)
    if stored_under(kb, record, sent_b) == entry_key(ka.primary, record, a.headers):
        assert fill_of(ka, vary, a, None) == sent_b


@given(clients(), st.sampled_from(KEEP), st.sampled_from(("GET", "POST", "DELETE")))
def test_pass_through_takes_host_and_target_from_the_key(client: Client, keep: tuple[str, ...], method: str) -> None:
    key = key_of(client, keep)
    if key is None:
        return
    sent = pass_request(method, key, (*client.headers, ("Host", "evil.example")), None, "192.0.2.1")
    assert sent.target == key.full_target
    assert [v for k, v in sent.headers if k.lower() == "host"] == [key.host]
    assert make_key("videos", key.host, sent.target, keep).primary == key.primary


def test_a_pass_never_sends_an_address_the_client_claims() -> None:
    """An origin behind the edge reads the client's address in X-Forwarded-For, which the edge writes; a client's
    own X-Real-IP or True-Client-IP would be a forged address there."""
    key = make_key("videos", "video.test", "/api", ())
    claims = [(name, "6.6.6.6") for name in CLAIMED_ADDRESS]
    sent = pass_request("POST", key, (("Accept", "*/*"), *claims), None, "192.0.2.1")
    assert [(k.lower(), v) for k, v in sent.headers if k.lower() != "via"] == [
        ("accept", "*/*"),
        ("host", "video.test"),
        ("x-forwarded-for", "192.0.2.1"),
    ]
    for name in CLAIMED_ADDRESS:
        with pytest.raises(ValueError, match="never forwarded"):
            check_forward_field(name)
