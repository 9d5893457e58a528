"""Which objects a peer that lacks a purge applied here may still hold as they were (core.purgegap): exactly those
the purge covers, by URL, directory or site, and only while the peer's vector lacks that purge."""

from __future__ import annotations

from edgecache.core.keys import make_key
from edgecache.core.purge import Entry
from edgecache.core.purgegap import ALL, index, lacked, reach

KQ = {"videos": ("*",), "music": ("*",)}


def entry(seq: int, kind: str, path: str = "", host: str = "video.test", origin: str = "a~1") -> Entry:
    return Entry(origin, seq, kind, "videos", "" if kind == "site" else host, path)


def lacks(
    entries: list[Entry], vector: dict[str, int], target: str, host: str = "video.test", site: str = "videos"
) -> str | None:
    key = make_key(site, host, target, ("*",))
    return lacked(index(entries, KQ), vector, frozenset(), site, host, key.path, key.primary)


def test_a_url_purge_covers_its_key_alone() -> None:
    purges = [entry(1, "url", "/v/a.mp4?q=1")]
    assert lacks(purges, {}, "/v/a.mp4?q=1") == "url"
    assert lacks(purges, {}, "/v/a.mp4?q=2") is None
    assert lacks(purges, {}, "/v/a.mp4?q=1", host="other.test") is None
    assert lacks(purges, {"a~1": 1}, "/v/a.mp4?q=1") is None  # it has applied it


def test_a_prefix_purge_covers_its_directory_on_its_host_and_a_site_purge_every_object() -> None:
    purges = [entry(1, "prefix", "/dir/")]
    assert lacks(purges, {}, "/dir/a") == "prefix"
    assert lacks(purges, {}, "/dir/sub/b?x=1") == "prefix"
    assert (lacks(purges, {}, "/dirt/a"), lacks(purges, {}, "/dir/a", host="other.test")) == (None, None)
    assert lacks([entry(2, "site")], {}, "/anything", host="other.test") == "site"
    assert lacks([entry(2, "site")], {}, "/anything", site="music") is None


def test_only_a_purge_the_peer_has_not_applied_counts_the_newest_of_each_origin() -> None:
    purges = [entry(1, "url", "/a"), entry(5, "url", "/a"), entry(3, "prefix", "/", origin="b~1")]
    assert lacks(purges, {"a~1": 4, "b~1": 3}, "/a") == "url"  # 5 is not applied there
    assert lacks(purges, {"a~1": 5, "b~1": 2}, "/a") == "prefix"
    assert lacks(purges, {"a~1": 5, "b~1": 3}, "/a") is None
    key = make_key("videos", "video.test", "/a", ("*",))
    retired = frozenset({"a~1", "b~1"})  # pruned there: it had every purge of them
    assert lacked(index(purges, KQ), {}, retired, "videos", "video.test", key.path, key.primary) is None


def test_a_url_this_node_cannot_key_is_purged_as_its_whole_site_and_other_sites_are_not_indexed() -> None:
    odd = entry(1, "url", "/a%00b")
    assert reach(odd, ("*",)) == ("videos", "", "")
    assert lacks([odd], {}, "/x") == "url"
    assert index([odd], {"music": ("*",)}) == index([], KQ)  # a site not served here holds nothing of it
    assert ALL == "all"
