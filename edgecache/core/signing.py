"""Signed URLs: a site's objects are served only to requests carrying a token its provider's backend made.

The scheme, exactly (README "Content providers: signed URLs" gives it to providers):

    string    = EXPIRES "\\n" SCOPE "\\n" SUBJECT "\\n" CLIENT
    signature = base64url(HMAC-SHA256(secret, UTF-8 of string)), without '=' padding

- EXPIRES: the `expires` parameter's value as it stands in the URL, 1 to 12 ASCII digits of Unix time (seconds).
  The token is valid while now < EXPIRES: at EXPIRES - 1 it is accepted, at EXPIRES it is refused.
- SCOPE and SUBJECT: "path" and the request's normalised path (core.keys.normalise_target); or, when the URL has a
  `prefix` parameter, "prefix" and that parameter's percent-decoded value, which must start with '/' and which
  the normalised path must start with (one token for every segment of an HLS/DASH set).
- CLIENT: the client's address when the site binds tokens to it (an IPv4-mapped IPv6 address as its IPv4 form),
  else empty.

The path is checked in its normalised form, the form that is keyed and fetched: '/free/../paid/x' is '/paid/x',
so no token for '/free/' covers it. Nothing here raises on client input: every bad token is a Refusal.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv6Address, ip_address
from urllib.parse import quote, unquote

from edgecache.core.keys import BadTarget, normalise_target

_EXPIRES = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, base64url without padding
# Parameter names made only of these survive target normalisation unchanged, so the name a site configures is the
# name core.keys leaves out of the key.
PARAM_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


@dataclass(frozen=True, slots=True)
class Signing:
    """A site's signed-URL rules ([sites.signing])."""

    secrets: tuple[str, ...] = field(repr=False)  # any of them validates a token (rotation); the first signs
    expires_param: str = "expires"
    signature_param: str = "signature"
    prefix_param: str = "prefix"
    client: bool = False  # tokens are bound to the client's address

    @property
    def params(self) -> tuple[str, ...]:
        """The parameters that carry a token: never part of a key, never sent to an origin (core.keys)."""
        return (self.expires_param, self.signature_param, self.prefix_param)


class Refusal(StrEnum):
    """Why a request's token is refused: the reason in its 403's body."""

    MISSING = "signed URL required: missing expiry or signature"
    MALFORMED = "malformed signed URL parameters"
    WRONG = "wrong signature"
    OUTSIDE = "path is outside the signed prefix"
    EXPIRED = "signed URL expired"


@dataclass(frozen=True, slots=True)
class _Token:
    expires: str
    signature: str
    prefix: str | None


def _token(rules: Signing, query: str) -> _Token | Refusal:
    """The token's parameters out of a (normalised) query; each must occur at most once."""
    found: dict[str, str] = {}
    for item in query.split("&"):
        name, _, value = item.partition("=")
        if name not in rules.params:
            continue
        if name in found:
            return Refusal.MALFORMED
        found[name] = value
    expires, signature = found.get(rules.expires_param), found.get(rules.signature_param)
    if expires is None or signature is None:
        return Refusal.MISSING
    if not _EXPIRES.fullmatch(expires) or not _SIGNATURE.fullmatch(signature):
        return Refusal.MALFORMED
    prefix = found.get(rules.prefix_param)
    if prefix is not None:
        try:
            prefix = unquote(prefix, errors="strict")
        except UnicodeDecodeError:
            return Refusal.MALFORMED
        if not prefix.startswith("/"):
            return Refusal.MALFORMED
    return _Token(expires, signature, prefix)


def canonical_client(client: str) -> str:
    """The client's address as it is signed: Python's text form, an IPv4-mapped IPv6 address as its IPv4 form."""
    try:
        address = ip_address(client)
    except ValueError:
        return client
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _signature(secret: str, expires: str, scope: str, subject: str, client: str) -> str:
    text = f"{expires}\n{scope}\n{subject}\n{client}".encode("utf-8", "surrogateescape")
    mac = hmac.new(secret.encode("utf-8", "surrogateescape"), text, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def verify(rules: Signing, path: str, query: str, client: str, now: float) -> Refusal | None:
    """None when the query carries a valid token for this normalised path (and client) at `now`."""
    token = _token(rules, query)
    if isinstance(token, Refusal):
        return token
    scope, subject = ("path", path) if token.prefix is None else ("prefix", token.prefix)
    bound = canonical_client(client) if rules.client else ""
    if not any(
        hmac.compare_digest(_signature(s, token.expires, scope, subject, bound), token.signature) for s in rules.secrets
    ):
        return Refusal.WRONG
    if token.prefix is not None and not path.startswith(token.prefix):
        return Refusal.OUTSIDE
    if now >= int(token.expires):
        return Refusal.EXPIRED
    return None


def sign(rules: Signing, target: str, expires: int, client: str | None = None, prefix: str | None = None) -> str:
    """`target` with a token valid until `expires` (Unix seconds) appended, signed with the first secret.

    Raises ValueError when the token could not be valid: the site binds tokens to a client and none is given (or
    one is given and it does not, or it is not an IP address), the prefix does not start with '/' or the path is
    not under it, or the target cannot be keyed.
    """
    if rules.client != (client is not None):
        bound = "binds tokens to a client address: give one" if rules.client else "does not bind tokens to a client"
        raise ValueError(f"the site {bound}")
    if client is not None:
        try:
            ip_address(client)
        except ValueError:
            raise ValueError(f"the client {client!r} is not an IP address: no request would come from it") from None
    if not 0 <= expires < 10**12:
        raise ValueError("expiry out of range")
    try:
        path, query = normalise_target(target)
    except BadTarget as exc:
        raise ValueError(str(exc)) from exc
    if any(item.partition("=")[0] in rules.params for item in query.split("&")):
        raise ValueError("the URL already carries a token parameter")
    if prefix is not None and (not prefix.startswith("/") or not path.startswith(prefix)):
        raise ValueError(f"the path {path!r} is not under the prefix {prefix!r}")
    scope, subject = ("path", path) if prefix is None else ("prefix", prefix)
    bound = canonical_client(client) if client is not None else ""
    signature = _signature(rules.secrets[0], str(expires), scope, subject, bound)
    items = [f"{rules.prefix_param}={quote(prefix, safe='/')}"] if prefix is not None else []
    items += [f"{rules.expires_param}={expires}", f"{rules.signature_param}={signature}"]
    return target + ("&" if "?" in target else "?") + "&".join(items)
