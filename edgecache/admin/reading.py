"""What the answer to one of the node's own prefetch requests says it was: pure, from its Cache-Status."""

from __future__ import annotations

from edgecache.core.headers import split_list


def _params(member: str) -> set[str]:
    return {p.strip() for p in member.split(";")[1:]}


def reading(cache_status: str) -> tuple[str, str]:
    """(outcome, source) of an answer to one of this node's own prefetch requests.

    RFC 9211 puts the cache nearest the client last: the last member is this node's, and when it forwarded the
    request to the owner (detail="peer"), the one before it is the owner's. Only those are read: members before
    them came from the origin, and an origin saying "hit" must neither make a fill look cached nor let its bytes
    pass the bandwidth cap. source is "cache" (this node's own cache: free), "peer" or "origin"."""
    found = list(split_list(cache_status))
    if not found or found[-1].split(";")[0].strip() != "edgecache":
        return "not-stored", "origin"  # not an answer of ours: counted against the cap, never as cached
    mine = _params(found[-1])
    source = "origin"
    if 'detail="peer"' in mine:
        source = "peer"
        owner = found[-2] if len(found) > 1 and found[-2].split(";")[0].strip() == "edgecache" else ""
        mine = _params(owner)
    elif "hit" in mine or "fwd-status=304" in mine:
        source = "cache"  # a hit, or revalidated: the body is the one stored here
    if "hit" in mine or "fwd-status=304" in mine:
        return "cached", source
    return ("fetched" if "stored" in mine else "not-stored"), source
