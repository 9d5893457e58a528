"""HTTPS: one server context per certificate, chosen during the handshake by the client's SNI name.

The name is matched against the sites' hosts the same way Host is; a client that sends no name, or one no
site has a certificate for, gets the default certificate ([server.tls], else the first site's). Certificates
are read again on reload (SIGHUP), so a renewed certificate is served without a restart: read in the reload's
thread with the config (reread), never on the loop.

A client that named one certificate's host (SNI) and then asks for a host another certificate covers is fronting
one site with another's name: misdirected() tells, for a 421 (RFC 9110 15.5.20), as nginx and CloudFront answer
it; a client that sent no name is served whatever its Host.

Every session ticket is encrypted with the listeners' context's keys and read before the SNI callback, so a
session could be resumed for a name of another certificate than it was made with (TLS 1.3; TLS 1.2 resumes with
the session's own name, which misdirected() judges): with several certificates, no TLS 1.3 ticket is issued.

The listeners' own context holds no certificate: every handshake is switched to a context of the last load
(OpenSSL calls the SNI callback with no name too). Loading a certificate into a context in place would keep the
one it replaces when their key types differ (a context holds one per type), served on to clients that prefer it.
"""

from __future__ import annotations

import logging
import ssl
import sys
import weakref
from dataclasses import dataclass
from typing import Any

from edgecache.config import Config, TLSFiles, load
from edgecache.config.certcheck import load_pair
from edgecache.core.route import Router, normalise_host
from edgecache.errors import ConfigError

log = logging.getLogger(__name__)


def _base() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _context(files: TLSFiles) -> ssl.SSLContext:
    ctx = _base()
    load_pair(ctx, files)
    return ctx


@dataclass(frozen=True, slots=True)
class Contexts:
    """Every certificate of a config, each loaded into a server context of its own: what Certificates serves."""

    default: ssl.SSLContext
    by_name: Router[ssl.SSLContext]
    count: int  # certificates (contexts) in all

    @classmethod
    def of(cls, config: Config) -> Contexts:
        """Read every certificate of `config`; raises ssl.SSLError, OSError or ValueError (none configured)."""
        default = config.tls or next((s.tls for s in config.sites if s.tls is not None), None)
        if default is None:
            raise ValueError("no certificate configured")
        contexts = {default: _context(default)}
        for site in config.sites:
            if site.tls is not None and site.tls not in contexts:
                contexts[site.tls] = _context(site.tls)
        by_name = Router((s.hosts, contexts[s.tls]) for s in config.sites if s.tls is not None)
        return cls(contexts[default], by_name, len(contexts))


def reread(path: str, tls: bool) -> tuple[Config, Contexts | None]:
    """A reload's read, all of it in readoff's thread (a file that stalls blocks no loop): the config file and the
    files it names, then, for a node with HTTPS listeners (`tls`), its certificates loaded into their contexts.
    The loop only swaps them in (Certificates.use). Raises ConfigError, a certificate's fault as one more line."""
    new = load(path)
    if not tls:
        return new, None
    try:
        return new, Contexts.of(new)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError([f"certificates: {exc}"]) from exc


class Certificates:
    def __init__(self, config: Config) -> None:
        self.context = _base()  # the one listeners use; the SNI callback switches every handshake from it
        self.context.sni_callback = self._pick
        self._by_name: Router[ssl.SSLContext] = Router(())
        self._default = self.context
        self._tickets = self.context.num_tickets  # OpenSSL's default (2)
        # The SNI name each connection's handshake gave (normalised), as long as its TLS object lives.
        self._names: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self.load(config)

    def load(self, config: Config) -> None:
        """Read every certificate of `config` (Contexts.of raises, the old ones kept) and serve them."""
        self.use(Contexts.of(config))

    def use(self, loaded: Contexts) -> None:
        """Serve `loaded` from the next handshake on (read off the loop on a reload: reread)."""
        self._default, self._by_name = loaded.default, loaded.by_name
        # OpenSSL decrypts a TLS 1.3 ticket with the listeners' keys before the SNI callback runs: a session made
        # with one certificate would be resumed under another's name. With several, no ticket is issued.
        self.context.num_tickets = 0 if loaded.count > 1 else self._tickets

    def _pick(self, conn: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        host = normalise_host(name) if name else None
        if host is not None:
            self._names[conn] = host
        conn.context = self._for(host)
        return None

    def _for(self, host: str | None) -> ssl.SSLContext:
        ctx = self._by_name.match(host) if host is not None else None
        return ctx or self._default

    def misdirected(self, conn: object, host: str) -> bool:
        """Was `conn` (a connection's TLS object) handshaken for a name whose certificate is not `host`'s (the
        request's, normalised)? Never when it sent no name. Both are looked up in the certificates loaded last, so
        a reload never makes a name and a host of the same certificate disagree."""
        name = self._names.get(conn)
        return name is not None and self._for(name) is not self._for(host)


def quiet_sni_faults() -> None:
    """CPython decodes a client's SNI name as ASCII before calling the SNI callback, and gives one it cannot
    decode to sys.unraisablehook, which writes five lines of traceback to stderr: any client could fill the log at
    will. Such a handshake fails as before (OpenSSL's internal_error alert); it is one line at INFO now, as
    aiohttp's client faults are (sites.quiet_client_faults). Installed once per worker, before every other hook."""
    previous = sys.unraisablehook
    if getattr(previous, "edgecache_sni", False):
        return

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, UnicodeDecodeError) and isinstance(unraisable.object, bytes):
            log.info("TLS handshake refused: the client's SNI name is not ASCII: %r", unraisable.object[:64])
            return
        previous(unraisable)

    hook.edgecache_sni = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
