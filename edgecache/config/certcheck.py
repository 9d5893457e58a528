"""What the config check says of a certificate that loads with its key but that clients refuse: one that has
expired or is not valid yet, or one that names none of a host its site serves.

These are warnings, logged (check-config prints them; a node logs them at start and on reload), not problems: a
node whose certificate lapsed must still start, and serve its other sites and plain HTTP, while it is renewed.
The certificate is read by a TLS handshake in memory with a client that trusts it alone (the standard library
decodes a certificate only for a peer it has verified), so expiry is OpenSSL's own verdict.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from edgecache.config.model import TLSFiles

_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_VERDICTS = {9: "is not valid yet", 10: "has expired"}  # X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED


def load_pair(ctx: ssl.SSLContext, files: TLSFiles) -> None:
    """Load the pair of `files` into `ctx`; raises OSError or ssl.SSLError. Given no way to get the passphrase of an
    encrypted key, OpenSSL asks for it on the terminal (or stdin): a check, a start or a reload waited there."""
    ctx.load_cert_chain(files.cert, files.key, password=_no_passphrase)


def _no_passphrase() -> bytes:
    raise OSError("the private key is encrypted: edgecache takes a key without a passphrase")


def warnings(files: TLSFiles, hosts: tuple[str, ...]) -> list[str]:
    """Why clients would refuse the certificate of `files` (a pair that loads), for itself or for `hosts`."""
    try:
        leaf = _PEM.search(files.cert.read_text(encoding="ascii", errors="replace"))
        peer = _handshake(files, leaf.group(0)) if leaf is not None else None
    except ssl.SSLCertVerificationError as exc:
        verdict = _VERDICTS.get(exc.verify_code)
        return [f"certificate {files.cert} {verdict}: clients refuse it"] if verdict else []
    except (OSError, ssl.SSLError):  # read or checked another way meanwhile: loading it reported what it could
        return []
    if peer is None:
        return []
    names = [(kind, value) for kind, value in peer.get("subjectAltName", ())]
    return [
        f"certificate {files.cert} does not name host {host!r} (subjectAltName): HTTPS clients asking for it refuse it"
        for host in hosts
        if not _covers(names, host)
    ]


def _handshake(files: TLSFiles, leaf: str) -> dict[str, Any] | None:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_pair(server, files)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the certificate itself is the trust anchor
    client.load_verify_locations(cadata=leaf)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c, s = client.wrap_bio(c_in, c_out), server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(8):  # a TLS 1.3 handshake takes two round trips
        for side in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if c.cipher() is not None and s.cipher() is not None:
            break
    return c.getpeercert() or None


def _covers(names: list[tuple[str, str]], host: str) -> bool:
    """Does a certificate naming `names` cover a site's host (a name, "*.suffix", or an IP address)?"""
    try:
        address = ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        return any(kind == "IP Address" and _same_ip(value, address) for kind, value in names)
    dns = [value.lower().rstrip(".") for kind, value in names if kind == "DNS"]
    parent = host.partition(".")[2]
    return host in dns or (not host.startswith("*.") and bool(parent) and f"*.{parent}" in dns)


def _same_ip(value: str, address: IPv4Address | IPv6Address) -> bool:
    try:
        return bool(ip_address(value.strip()) == address)
    except ValueError:
        return False
