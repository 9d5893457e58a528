"""The names slices are stored under: the object's entry key and copy (version#token) hashed, then the index."""

from __future__ import annotations

import functools

from edgecache.core.keys import digest


def slice_name(entry_key: str, version: str, index: int) -> str:
    return slice_prefix(entry_key, version) + str(index)


@functools.lru_cache(maxsize=4096)
def slice_prefix(entry_key: str, version: str) -> str:
    """What the names of one version's slices share: two hashes, worked out once for the objects being served,
    not for every slice of every answer."""
    return f"s:{digest(entry_key)}:{digest(version)[:16]}:"


def meta_name(entry_key: str) -> str:
    """The disk key of the metadata stored under `entry_key` (what meta_of names from one of its slices)."""
    return "m:" + digest(entry_key)


def meta_of(slice: str) -> str:
    """The disk key of the metadata of a slice's object. A hit on a slice counts for it too: this process keeps
    hot metadata at hand and never reads it from disk, and the disk's policy would evict it as unused."""
    return "m:" + slice.split(":", 2)[1]
