"""docs/config.md against the config reader: every key the reader takes (config.schema.KEYS) is documented, every
documented key is one it takes, and a default written as a TOML value is what leaving the key out gives."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from edgecache.config import KEYS, build

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
# The tables [server.tls] and [sites.tls] are read by one reader (KEYS["tls"]).
_ALIASES = {"server.tls": "tls", "sites.tls": "tls"}
_HEADING = re.compile(r"^## (.+)$", re.M)
_TABLE_NAME = re.compile(r"\[\[?([a-z_.]+)\]\]?")
_ROW = re.compile(r"^\| `([a-z_]+)` \| (.*?) \| .* \|$", re.M)

# The smallest document with every table whose keys have defaults: each key is set in it to its documented default.
BASE: dict[str, Any] = {
    "sites": [
        {
            "name": "s",
            "hosts": ["s.test"],
            "origins": ["http://10.0.0.1:8080"],
            "cache": {},
            "signing": {"secrets": ["a-secret-of-sixteen-chars"]},
        }
    ],
    "cluster": {
        "self": "n1",
        "key": "k" * 32,
        "nodes": [{"id": "n1", "address": "10.0.0.2:8080"}],
    },
    "admin": {"listen": "127.0.0.1:9180", "tokens": [{"name": "ops", "token": "t" * 16, "sites": ["s"]}]},
}


def documented() -> dict[str, dict[str, str]]:
    """Each table's keys in the doc, with their default cells."""
    text = DOC.read_text()
    heads = list(_HEADING.finditer(text))
    tables: dict[str, dict[str, str]] = {}
    for i, head in enumerate(heads):
        body = text[head.end() : heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        rows = {key: default for key, default in _ROW.findall(body)}
        for name in _TABLE_NAME.findall(head.group(1)):
            tables[_ALIASES.get(name, name)] = rows
    return tables


def toml_default(cell: str) -> tuple[bool, Any]:
    """(True, value) when the default cell starts with a TOML value in backticks; (False, None) when it is in words
    (worked out from other keys, or off)."""
    m = re.match(r"`([^`]+)`", cell)
    if not m:
        return False, None
    try:
        return True, tomllib.loads(f"v = {m.group(1)}")["v"]
    except tomllib.TOMLDecodeError:
        return False, None  # a key's name, such as `rate_limit`


def set_key(doc: dict[str, Any], table: str, key: str, value: Any) -> None:
    """Set `key` of `table` in `doc`, in the first table of an array of tables."""
    where: Any = doc
    for part in table.split(".") if table else []:
        where = where.setdefault(part, {})
        if isinstance(where, list):
            where = where[0]
    where[key] = value


def test_every_key_the_reader_takes_is_documented_and_every_documented_key_is_read() -> None:
    docs = documented()
    tables = {name for name in KEYS if name}
    assert set(docs) == tables, f"documented but not read: {set(docs) - tables}; not documented: {tables - set(docs)}"
    headings = "\n".join(_HEADING.findall(DOC.read_text()))
    assert KEYS[""] == {name.split(".")[0] for name in _TABLE_NAME.findall(headings)}
    for table in sorted(tables):
        assert set(docs[table]) == KEYS[table], (
            f"[{table}]: documented but not read {set(docs[table]) - KEYS[table]}; "
            f"read but not documented {KEYS[table] - set(docs[table])}"
        )


def _cases() -> list[tuple[str, str, Any]]:
    found = []
    for table, rows in documented().items():
        for key, cell in rows.items():
            literal, value = toml_default(cell)
            if literal:
                found.append((table, key, value))
    return found


@pytest.mark.parametrize(("table", "key", "value"), _cases(), ids=lambda v: str(v))
def test_a_documented_default_is_what_leaving_the_key_out_gives(table: str, key: str, value: Any) -> None:
    base = Path("/etc/edgecache")
    doc = copy.deepcopy(BASE)
    set_key(doc, table, key, value)
    assert build(doc, "f.toml", base) == build(copy.deepcopy(BASE), "f.toml", base), f"{table}.{key} = {value!r}"


def test_the_defaults_are_checked_for_most_keys() -> None:
    """The check above can fail: most keys have a TOML default, and one documented wrongly is caught."""
    assert len(_cases()) >= 50
    doc = copy.deepcopy(BASE)
    set_key(doc, "cache", "disk", "2GiB")
    assert build(doc, "f.toml", Path("/x")) != build(copy.deepcopy(BASE), "f.toml", Path("/x"))


ROOT = DOC.parents[1]
_EXAMPLE_TABLE = re.compile(r"^\s*#?\s*\[\[?([a-z_.]+)\]\]?\s*(?:#.*)?$")
_EXAMPLE_KEY = re.compile(r"^\s*#?\s*([a-z_]+)\s*=\s*[\"\[{0-9tf.-]")


def examples() -> list[tuple[str, str]]:
    """The TOML an operator copies: the README's and docs' toml blocks, config/*.toml, the Kubernetes ConfigMap's."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        found += [(path.name, block) for block in re.findall(r"```toml\n(.*?)```", path.read_text(), re.S)]
    found += [(str(p.relative_to(ROOT)), p.read_text()) for p in sorted((ROOT / "config").rglob("*.toml"))]
    kubernetes = (ROOT / "config" / "kubernetes" / "edgecache.yaml").read_text()
    configmap = re.search(r"edgecache.toml: \|\n(.*?)\n\S", kubernetes, re.S)
    assert configmap, "no edgecache.toml in config/kubernetes/edgecache.yaml"
    return [*found, ("config/kubernetes/edgecache.yaml", configmap.group(1))]


def test_every_key_the_examples_set_or_comment_out_is_one_the_reader_takes() -> None:
    """A key an example sets, or shows commented out for the operator to set, is read: not a misspelling the
    reader would refuse as unknown (a commented one is never checked by check-config)."""
    unknown, seen = [], 0
    for where, text in examples():
        table = ""
        for line in text.splitlines():
            if m := _EXAMPLE_TABLE.match(line):
                table = _ALIASES.get(m.group(1), m.group(1))
            elif m := _EXAMPLE_KEY.match(line):
                seen += 1
                if m.group(1) not in KEYS.get(table, frozenset()):
                    unknown.append(f"{where}: [{table}] {line.strip()}")
    assert seen >= 150
    assert unknown == []
