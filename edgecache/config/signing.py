"""A site's [sites.signing] table: the secrets of its signed URLs and the names of their query parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecache.config.files import read_secret_file
from edgecache.config.schema import KEYS
from edgecache.config.values import _bool, _Reader, _str_list
from edgecache.core.signing import PARAM_CHARS, Signing


def read_signing(r: _Reader, site: dict[str, Any], prefix: str, base: Path) -> Signing | None:
    if "signing" not in site:
        return None
    t = site["signing"]
    p = f"{prefix}signing."
    if not isinstance(t, dict):
        r.problem(f"{prefix}signing", "expected a table")
        return None
    r.unknown(t, p, KEYS["sites.signing"])
    signing = Signing(
        secrets=_signing_secrets(r, t, p, base),
        expires_param=r.get(t, p, "expires_param", _param, "expires"),
        signature_param=r.get(t, p, "signature_param", _param, "signature"),
        prefix_param=r.get(t, p, "prefix_param", _param, "prefix"),
        client=r.get(t, p, "client", _bool, False),
    )
    if len(set(signing.params)) != len(signing.params):
        r.problem(f"{p}expires_param", "the expiry, signature and prefix parameters must have different names")
    return signing


def _signing_secrets(r: _Reader, t: dict[str, Any], p: str, base: Path) -> tuple[str, ...]:
    """`secrets`, or `secret_file`: one secret a line (blank lines and '#' comments skipped), the first signs."""
    if ("secrets" in t) == ("secret_file" in t):
        r.problem(f"{p}secrets", "give exactly one of secrets and secret_file")
        return ()
    if "secrets" in t:
        secrets: tuple[str, ...] = r.get(t, p, "secrets", _str_list(_text), ())
        key = f"{p}secrets"
    else:
        key = f"{p}secret_file"
        text = read_secret_file(r, key, t["secret_file"], base)
        if text is None:
            return ()
        secrets = tuple(s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#"))
    if not secrets:
        r.problem(key, "must give at least one secret")
    if any(len(s) < 16 for s in secrets):
        r.problem(key, "every secret must be at least 16 characters")
    return secrets


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a list of strings")
    return v


def _param(v: Any) -> str:
    if not isinstance(v, str) or not v or not set(v) <= PARAM_CHARS:
        raise ValueError("expected a query parameter name of letters, digits, '-', '.', '_' or '~'")
    return v
