"""The error tree: every error says who is at fault (client, origin, peer, storage, config)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecache.core.admit import Reply

if TYPE_CHECKING:
    from edgecache.core.churn import Tries


class EdgecacheError(Exception):
    """Base of every error edgecache raises on purpose."""


class ClientError(EdgecacheError):
    """The request is at fault; answered with `status` and the message as the reason."""

    def __init__(self, status: int, reason: str, close: bool = False, retry_after: int = 0) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.close = close  # the connection ends with the answer: what follows the head is no request
        self.retry_after = retry_after  # of a 429 (core.admit.Reply)

    @classmethod
    def of(cls, reply: Reply) -> ClientError:
        return cls(reply.status, reply.reason, retry_after=reply.retry_after)


class OriginError(EdgecacheError):
    """The origin failed us: connection refused, timeout, a malformed or inconsistent response."""

    # Whom the failed request went to, as the access log's upstream_addr names them (host:port, in the order tried);
    # set where it was asked (OriginClient, read_chunks) or by the fill that met it (Fill.fail); None: nobody was.
    tried: str | None = None

    def __init__(
        self,
        reason: str,
        *,
        retryable: bool = True,
        timeout: bool = False,
        connect: bool = False,
        refused: bool = False,
        strict: bool = False,
        malformed: bool = False,
        peer_kind: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.timeout = timeout
        self.connect = connect  # no response came: an idempotent request may go elsewhere
        self.refused = refused  # the connection itself was refused: nothing was sent, whatever the method
        self.strict = strict  # it failed the revalidation of an entry never served stale (core.freshness.never_stale)
        self.malformed = malformed  # an answer came that aiohttp's parser refused (proxy.nohead)
        # A peer's failure (its kind, as observe.peer_error counted it), met where a fill reads a peer's body like an
        # origin's: answered and counted as the peer's (errorpage.origin_failed), never as the origin's.
        self.peer_kind = peer_kind

    @property
    def status(self) -> int:
        """The answer's status: 502; 504 on a timeout, or when no answer came to the revalidation of an entry that
        is never served stale: the cache is disconnected, and RFC 9111 5.2.2.2 says its error SHOULD be a 504."""
        return 504 if self.timeout or (self.strict and self.connect) else 502

    def revalidating(self) -> OriginError:
        """This failure, of the revalidation of an entry never served stale (`strict`)."""
        kinds = {"timeout": self.timeout, "connect": self.connect, "refused": self.refused, "malformed": self.malformed}
        again = OriginError(self.reason, retryable=self.retryable, strict=True, peer_kind=self.peer_kind, **kinds)
        again.tried = self.tried
        return again


class VersionChanged(OriginError):
    """The origin answered with another version of the object than the one being assembled."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, retryable=False)

    def counted(self, tries: Tries) -> Tries:
        """A request's `tries` with the one this ended, as either path counts them (core.churn.Tries): a new version
        met (overridden below: a purge here, a slice unread)."""
        return tries.met(purge=False)


class Overtaken(VersionChanged):
    """A purge here overtook the fill a request read, which nobody streams (a slice reader's): its answer is not
    stored, and the request starts again from a look-up after the purge. Not a new version at the origin: counted
    apart from those (core.churn.next_try)."""

    def counted(self, tries: Tries) -> Tries:
        return tries.met(purge=True)


class Unread(Overtaken):
    """A slice an answer needs that its reader did not read in its tries (proxy.reading.read_slice): each fetch of it
    the reader met, another worker's or one of this worker's, ended without storing it (a purge overtook it, or it met
    another version than the reader's copy). Its copy drops nothing, as for a purge's; and no failure of the origin:
    the request's tries are spent (core.churn.next_try), and it is relayed from one origin request, not answered 502."""

    def counted(self, tries: Tries) -> Tries:
        return tries.met(purge=True, unread=True)


class PeerCut(VersionChanged):
    """A peer's answer a fill read (a hot copy's owner, a look-aside's previous owner) broke off mid-body: an owner
    cuts its answer when its own fill meets a new version at the origin (docs/cluster.md), or it was killed. A reader
    of the fill that sent its viewer nothing yet starts again, a try as core.churn counts them, and is asked afresh
    (the owner, now holding the new version; or, seen down, the next owner or the origin); one that sent bytes is
    cut, as for any failure mid-body. The peer's failure, counted once where its body was read (`peer_kind`)."""

    def __init__(self, reason: str, peer_kind: str) -> None:
        super().__init__(reason)
        self.peer_kind = peer_kind

    @classmethod
    def of(cls, exc: OriginError) -> OriginError:
        """A fill's failure as its readers meet it: a peer's body that broke (kind "reset", proxy.origin.read_chunks)
        is a PeerCut; anything else (a timeout, which a try again would wait out once more) as it is."""
        if exc.peer_kind != "reset" or isinstance(exc, VersionChanged):
            return exc
        cut = cls(exc.reason, exc.peer_kind)
        cut.tried = exc.tried
        return cut


class Busy(OriginError):
    """The node, not the origin, could not take the answer in now (proxy.fillmemory): 503, and nothing counted
    against the origin."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, retryable=False)


class PeerError(EdgecacheError):
    """Another edge node of the cluster failed us."""


class PeerWithheld(PeerError):
    """A request to a peer not sent after all: the peer may still hold what a purge applied here removed
    (cluster.view.ClusterView.lacks_purge), asked before each attempt (proxy.origin.OriginClient.to_peer). The
    caller answers from this node itself: its own cache or the origin."""


class StorageError(EdgecacheError):
    """The disk tier failed (full, corrupt, deleted underneath us)."""


class ConfigError(EdgecacheError):
    """The configuration is invalid; `problems` holds every 'file: key: problem' line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
