"""The files a config names and the node reads at check time: secret files and TLS certificate pairs. A relative
path is relative to the config file's directory (`base`)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from edgecache.config.certcheck import warnings
from edgecache.config.model import TLSFiles
from edgecache.config.schema import KEYS
from edgecache.config.values import _Reader


def read_secret_file(r: _Reader, key: str, value: Any, base: Path) -> str | None:
    """The text of the secret file `value` names (cluster key_file, admin token_file, sites.signing secret_file);
    None once the problem is reported under `key`."""
    path = Path(str(value))
    path = path if path.is_absolute() else base / path
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path, a file that is not UTF-8
        reason = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
        r.problem(key, f"cannot read {str(path)!r}: {reason}")
        return None


def read_tls(r: _Reader, t: dict[str, Any], p: str, base: Path, hosts: tuple[str, ...] = ()) -> TLSFiles | None:
    """The `tls` table of `t` ([server.tls] or a site's), its pair loaded once here so a bad one fails the check;
    one that clients refuse (expired, or naming none of a host of `hosts`, its site's) is warned of."""
    raw = t.get("tls")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        r.problem(f"{p}tls", "expected a table with cert and key")
        return None
    r.unknown(raw, f"{p}tls.", KEYS["tls"])
    paths = []
    for name in ("cert", "key"):
        value = raw.get(name)
        if not isinstance(value, str) or not value:
            r.problem(f"{p}tls.{name}", "expected the path of a PEM file")
            return None
        path = Path(value)
        paths.append(path if path.is_absolute() else base / path)
    files = TLSFiles(paths[0], paths[1])
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        r.problem(f"{p}tls", f"cannot load certificate {files.cert} with key {files.key}: {exc}")
        return None
    for warning in warnings(files, hosts):
        r.warn(f"{p}tls", warning)
    return files
