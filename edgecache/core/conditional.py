"""Client conditional requests answered by the cache (RFC 9110 13.1-13.2), evaluated on stored validators.

A client's If-None-Match or If-Match is read as RFC 9110 writes it: `*`, or a list of entity-tags, each
[ W/ ] DQUOTE *etagc DQUOTE (8.8.3). A member that is not one (an unquoted `e1`, a lower-case `w/`) is compared as
it is, as nginx and Fastly compare every tag: it matches only a stored ETag of the same characters (an origin's
unquoted tag, echoed by a browser), never a quoted one by dropping its quotes. A field with such a member that
matches nothing names no representation the cache can tell (unreadable): it gets neither a 304 nor a 412, but the
whole representation, 200 (respond.plan), as an If-None-Match that does not match or an If-Range the cache cannot
read gets it; that answer is right whatever the client meant, and it mixes no versions.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from edgecache.core.headers import Headers, get_all, get_first, split_list
from edgecache.core.httpdate import parse_http_date as _date

# etagc = %x21 / %x23-7E / obs-text (RFC 9110 8.8.3); obs-text as aiohttp decodes it (UTF-8, or escaped bytes).
_TAG = r'(?:W/)?"[\x21\x23-\x7e\x80-\U0010ffff]*"'
_ENTITY_TAG = re.compile(_TAG)
# #entity-tag (RFC 9110 5.6.1): a list of tags, empty elements allowed, or none.
_TAGS = re.compile(rf"[ \t,]*(?:{_TAG}(?:[ \t]*,[ \t,]*{_TAG})*[ \t,]*)?")


def _members(request: Headers, name: str) -> tuple[list[str], bool] | None:
    """The members of the request's `name` field (its lines joined), and whether the field is well formed (`*`, or
    a list of entity-tags); None without the field."""
    lines = get_all(request, name)
    if not lines:
        return None
    value = ", ".join(lines).strip(" \t")
    if value == "*":
        return ["*"], True
    if _TAGS.fullmatch(value):
        return _ENTITY_TAG.findall(value), True
    return list(split_list(value)), False


def _same(stored: str | None, member: str, weak: bool) -> bool:
    """Does `member` of the client's field name the `stored` ETag? RFC 9110 8.8.3.2's weak or strong comparison of
    two entity-tags; anything else only when it is the same characters."""
    if stored is None:
        return False
    stored = stored.strip()
    if not (_ENTITY_TAG.fullmatch(stored) and _ENTITY_TAG.fullmatch(member)):
        return stored == member
    return weak_match(stored, member) if weak else strong_match(stored, member)


def _names(members: tuple[list[str], bool], etag: str | None, weak: bool) -> bool | None:
    """Whether a field's `members` (_members) name the stored representation; None when the field is unreadable:
    not well formed, and no member is the stored ETag."""
    tags, formed = members
    if formed and tags == ["*"]:
        return True  # any stored representation, with an ETag or not
    if any(_same(etag, t, weak) for t in tags):
        return True
    return False if formed else None


def _opaque(tag: str) -> str:
    """The tag without W/ and quotes: origins that send unquoted tags still compare equal to themselves."""
    tag = tag.strip()
    tag = tag[2:] if tag.startswith("W/") else tag
    return tag[1:-1] if len(tag) >= 2 and tag[0] == tag[-1] == '"' else tag


def weak_match(a: str, b: str) -> bool:
    """RFC 9110 8.8.3.2's weak comparison: the opaque tags are the same, W/ or not."""
    return _opaque(a) == _opaque(b)


def strong_match(a: str, b: str) -> bool:
    """RFC 9110 8.8.3.2's strong comparison: neither is weak, and they are the same."""
    return not a.startswith("W/") and not b.startswith("W/") and a.strip() == b.strip()


class Verdict(NamedTuple):
    """What a request's conditions say of the stored representation, each field read once (judge)."""

    failed: bool  # 412: If-Match or If-Unmodified-Since fails
    not_modified: bool  # 304: If-None-Match or If-Modified-Since matches
    unreadable: bool  # If-Match or If-None-Match names nothing the cache can tell: the whole representation


def judge(request: Headers, etag: str | None, last_modified: str | None, date: str | None = None) -> Verdict:
    """RFC 9110 13.2.2's evaluation against the stored validators.

    If-Match uses strong comparison and If-None-Match weak (13.1.1, 13.1.2); `*` holds for any stored
    representation, with an ETag or not. Present, each makes its date field ignored (If-Unmodified-Since,
    If-Modified-Since: 13.1.3, 13.2.2), an unreadable one too, which neither fails nor matches (the module's rule).
    If-Unmodified-Since is ignored without a modification date (13.1.4); for If-Modified-Since the stored Date
    stands in for Last-Modified (RFC 9111 4.3.2)."""
    im, inm = _members(request, "if-match"), _members(request, "if-none-match")
    strong = None if im is None else _names(im, etag, weak=False)
    weak = None if inm is None else _names(inm, etag, weak=True)
    if im is not None:
        failed = strong is False
    else:
        ius, modified = (
            _date(get_first(request, "if-unmodified-since")),
            _date(last_modified) if last_modified else None,
        )
        failed = ius is not None and modified is not None and modified > ius
    if inm is not None:
        matched = weak is True
    else:
        ims = _date(get_first(request, "if-modified-since"))
        lm = _date(last_modified) if last_modified else _date(date)
        matched = ims is not None and lm is not None and lm <= ims
    return Verdict(failed, matched, (im is not None and strong is None) or (inm is not None and weak is None))


def not_modified(request: Headers, etag: str | None, last_modified: str | None, date: str | None = None) -> bool:
    """True when a GET/HEAD should be answered 304 from the stored validators (judge)."""
    return judge(request, etag, last_modified, date).not_modified


def precondition_failed(request: Headers, etag: str | None, last_modified: str | None) -> bool:
    """If-Match or If-Unmodified-Since fails against what is stored (judge)."""
    return judge(request, etag, last_modified).failed


def unreadable(request: Headers, etag: str | None) -> bool:
    """Does the request's If-Match or If-None-Match name no representation the cache can tell (the module's rule)?
    Its answer is then the whole representation, whatever else the request asks."""
    return judge(request, etag, None).unreadable


def validates(request: Headers) -> bool:
    """Does the request carry a validator of its own (If-None-Match, If-Modified-Since)?"""
    return any(get_first(request, h) is not None for h in ("if-none-match", "if-modified-since"))
