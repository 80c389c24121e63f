"""`server.tls_cert` and `server.tls_key`: the files of an HTTPS server, paths relative to the config file."""

from __future__ import annotations

from pathlib import Path

from .node import Node
from .settings import ConfigError

__all__ = ["TLS_KEYS", "parse_tls"]

TLS_KEYS = frozenset({"tls_cert", "tls_key"})


def parse_tls(server: Node, base_dir: Path | None) -> tuple[Path | None, Path | None]:
    """(certificate chain, private key), both or neither; their contents are read at start-up (`tls.py`)."""
    cert, key = server.opt_str("tls_cert"), server.opt_str("tls_key")
    if (cert is None) != (key is None):
        missing, given = ("tls_key", "tls_cert") if key is None else ("tls_cert", "tls_key")
        raise ConfigError(server.key(missing), f"is required with {given} (HTTPS needs both the certificate and key)")
    if cert is None or key is None:
        return None, None
    return _path(cert, base_dir), _path(key, base_dir)


def _path(value: str, base_dir: Path | None) -> Path:
    p = Path(value).expanduser()
    return base_dir / p if not p.is_absolute() and base_dir is not None else p
