"""A node's signed request to a peer's admin API (core.nodeauth): it verifies as itself only."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgecache.core import nodeauth
from edgecache.core.hop import MAX_SKEW

TOKEN = "e9823edcebb4c8c2cba7bda4862cbeeaf8183b677f036af5d12b0800da81a2d5"
BODY = b'{"url": "http://video.test/p", "local": true, "id": ["node0~1", 1]}'
NOW = 1_800_000_000.0


def credentials(value: str) -> str:
    scheme, _, rest = value.partition(" ")
    assert scheme == nodeauth.SCHEME
    return rest


def test_a_signature_covers_the_token_method_path_body_and_time() -> None:
    signed = credentials(nodeauth.authorization(TOKEN, "POST", "/purge", BODY, NOW))
    assert TOKEN not in signed
    assert nodeauth.verified(TOKEN, signed, "POST", "/purge", BODY, NOW)
    assert nodeauth.verified(TOKEN, signed, "POST", "/purge", BODY, NOW + MAX_SKEW)
    assert nodeauth.verified(TOKEN, f" {signed} ", "POST", "/purge", BODY, NOW - MAX_SKEW)
    assert not nodeauth.verified(TOKEN, signed, "POST", "/purge", BODY, NOW + MAX_SKEW + 1)
    assert not nodeauth.verified(TOKEN, signed, "POST", "/purge", BODY, NOW - MAX_SKEW - 1)
    assert not nodeauth.verified("another" + TOKEN, signed, "POST", "/purge", BODY, NOW)
    assert not nodeauth.verified(TOKEN, signed, "PUT", "/purge", BODY, NOW)
    assert not nodeauth.verified(TOKEN, signed, "POST", "/purges/after", BODY, NOW)
    assert not nodeauth.verified(TOKEN, signed, "POST", "/purge", BODY + b" ", NOW)
    assert not nodeauth.verified(TOKEN, signed, "POST", "/purge", b'{"site": "videos"}', NOW)
    stamp, _, mac = signed.partition(",")
    later = f"t={int(NOW) + 1},{mac}"  # the time is signed: moved on, the signature is another's
    assert not nodeauth.verified(TOKEN, later, "POST", "/purge", BODY, NOW)
    assert not nodeauth.verified(TOKEN, stamp, "POST", "/purge", BODY, NOW)
    # What the guard asks before it reads a body: the form and the time, not the signature.
    assert nodeauth.may_be_signed(signed, NOW + MAX_SKEW)
    assert nodeauth.may_be_signed(later, NOW)
    assert not nodeauth.may_be_signed(signed, NOW + MAX_SKEW + 1)
    assert not nodeauth.may_be_signed(stamp, NOW)


@given(st.text(max_size=200), st.text(max_size=40), st.binary(max_size=200))
def test_verification_never_raises_on_what_a_client_sends(value: str, path: str, body: bytes) -> None:
    assert not nodeauth.verified(TOKEN, value, "POST", path, body, NOW)
