"""List-valued fields split as RFC 9110 5.6.1 says: the splitter the Cache-Control parser and the prefetch jobs'
reading of Cache-Status (RFC 9211) share."""

from edgecache.core.headers import split_list


def test_a_list_is_split_on_commas_outside_quoted_strings() -> None:
    value = 'cdn; hit, edgecache; detail="a, b", edgecache; hit'
    assert list(split_list(value)) == ["cdn; hit", 'edgecache; detail="a, b"', "edgecache; hit"]


def test_empty_elements_and_an_escaped_quote_inside_a_string() -> None:
    assert list(split_list("")) == []
    assert list(split_list(" , a ,, b ,")) == ["a", "b"]
    assert list(split_list(r'x; detail="say \"a, b\"", y')) == [r'x; detail="say \"a, b\""', "y"]
