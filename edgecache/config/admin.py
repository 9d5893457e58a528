"""The [[admin.tokens]] of the admin API: who may call it, with which role, on which sites."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecache.config.files import read_secret_file
from edgecache.config.model import Token
from edgecache.config.schema import KEYS
from edgecache.config.values import _name, _Reader, _str_list


def read_tokens(r: _Reader, admin: dict[str, Any], base: Path) -> tuple[Token, ...]:
    tokens = []
    named: dict[str, int] = {}  # each name and the first token that has it
    raw = admin.get("tokens", [])
    for i, p, t in r.tables(raw, "admin.tokens", KEYS["admin.tokens"], "expected [[admin.tokens]] tables"):
        secret = _secret(r, t, p, base)
        role = r.get(t, p, "role", str, "provider")
        if role not in ("operator", "provider"):
            r.problem(f"{p}role", "must be 'operator' or 'provider'")
        sites: tuple[str, ...] = r.get(t, p, "sites", _str_list(_name), ())
        if role == "provider" and not sites:
            r.problem(f"{p}sites", "a provider token must name the sites it may act on")
        name = r.get(t, p, "name", _name, f"token{i}")
        # Prefetch jobs are owned by a token's name (admin/prefetch.py): two tokens of one name share their jobs.
        if name in named:
            r.problem(
                f"{p}name", f"{name!r} is also the name of admin.tokens[{named[name]}]: give each token its own name"
            )
        named.setdefault(name, i)
        tokens.append(Token(name, secret, role, sites))
    if len({t.secret for t in tokens}) != len(tokens):
        r.problem("admin.tokens", "two tokens have the same secret")
    return tuple(tokens)


def _secret(r: _Reader, t: dict[str, Any], p: str, base: Path) -> str:
    if ("token" in t) == ("token_file" in t):
        r.problem(f"{p}token", "give exactly one of token and token_file")
        return ""
    if "token_file" in t:
        text = read_secret_file(r, f"{p}token_file", t["token_file"], base)
        if text is None:
            return ""
        secret = text.strip()
    elif not isinstance(t["token"], str):
        r.problem(f"{p}token", "expected a string")
        return ""
    else:
        secret = t["token"]
    if len(secret) < 16:
        r.problem(f"{p}token", "must be at least 16 characters")
    elif not secret.isprintable() or secret != secret.strip():
        # A presented token is stripped, and a header carries no control character: such a secret never matches.
        r.problem(f"{p}token", "must be printable, without spaces around it")
    return secret
