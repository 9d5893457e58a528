"""What a starting node takes for a runtime directory a dead node left: only a directory made as ours, by name
shape, type, owner and mode (its lock is looked at only then, in edgecache.rundirs)."""

from __future__ import annotations

import stat

import pytest

from edgecache.core.rundirs import Kind, kind_of, sweepable, too_long_for_sockets

DIR = stat.S_IFDIR | 0o700
ME, OTHER = 1000, 1001


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("edgecache-ab_9xk2q", Kind.PRIVATE),
        ("edgecache-metrics-ab_9xk2q", Kind.METRICS),
        ("edgecache-metricsx", Kind.PRIVATE),  # mkdtemp may draw these 8 after "edgecache-"
        ("edgecache-metrics", None),
        ("edgecache-abcdefg", None),  # 7 random characters
        ("edgecache-abcdefghi", None),  # 9
        ("edgecache-ABCDEFGH", None),  # tempfile's names are lower case
        ("edgecache-ab.defgh", None),
        ("edgecache-metrics-abcdefg", None),
        ("edgecache-metrics-", None),
        ("xedgecache-abcdefgh", None),
        ("pymp-abcdefgh", None),
        ("edgecache-abcdefgh/..", None),
    ],
)
def test_the_name_shape(name: str, kind: Kind | None) -> None:
    assert kind_of(name) == kind


@pytest.mark.parametrize(
    ("mode", "owner", "ours"),
    [
        (DIR, ME, True),
        (DIR, OTHER, False),  # another user's node, or a directory someone else made with our name
        (DIR, 0, False),
        (stat.S_IFDIR | 0o755, ME, False),  # not made by mkdtemp
        (stat.S_IFDIR | 0o1700, ME, False),
        (stat.S_IFLNK | 0o777, ME, False),  # a symlink named like ours: lstat's mode
        (stat.S_IFLNK | 0o700, ME, False),
        (stat.S_IFREG | 0o700, ME, False),
        (stat.S_IFIFO | 0o700, ME, False),
    ],
)
def test_type_owner_and_mode(mode: int, owner: int, ours: bool) -> None:
    for name, kind in (("edgecache-q1w2e3r4", Kind.PRIVATE), ("edgecache-metrics-q1w2e3r4", Kind.METRICS)):
        assert sweepable(name, mode, owner, ME) == (kind if ours else None)
    assert sweepable("other-q1w2e3r4", mode, owner, ME) is None


def test_a_temp_dir_too_long_for_the_sockets_is_named_with_the_longest_that_fits() -> None:
    """Under the temp dir: "edgecache-" and 8 characters, then "listener-" and 8 (37 bytes and two slashes)."""
    assert too_long_for_sockets(b"/" + b"x" * 69) is None  # 70 bytes: a socket path of 107
    problem = too_long_for_sockets(b"/" + b"x" * 70)
    assert problem == (
        f"the temp dir /{'x' * 70} is too long for the node's Unix sockets: their paths under it take 108 bytes, "
        "and Linux binds at most 107; set TMPDIR to a shorter directory (at most 70 bytes)"
    )
