"""The HTTPS server's SSLContext, from `server.tls_cert` and `server.tls_key`.

Loaded before the server listens, so a missing, unreadable or wrong file is one ConfigError that names
the file and what is wrong with it, not an `ssl.SSLError` traceback out of the event loop.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from .config import ConfigError, ServerSettings

__all__ = ["server_context"]


def server_context(server: ServerSettings) -> ssl.SSLContext | None:
    """A server-side context (TLS 1.2 or later, ALPN http/1.1); None when TLS is not configured."""
    cert, key = server.tls_cert, server.tls_key
    if cert is None or key is None:
        return None
    cert_text = _read("server.tls_cert", cert)
    key_text = _read("server.tls_key", key)
    # which file is wrong: OpenSSL's own "[SSL] PEM lib" names neither
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise ConfigError("server.tls_cert", f"{cert} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    if "PRIVATE KEY-----" not in key_text:
        raise ConfigError("server.tls_key", f"{key} holds no PEM private key (-----BEGIN ... PRIVATE KEY-----)")
    if "ENCRYPTED" in key_text:  # OpenSSL would ask for its passphrase on the terminal
        raise ConfigError("server.tls_key", f"{key} is encrypted; give ollamux a key without a passphrase")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])  # aiohttp's server speaks HTTP/1.1 only: never offer h2
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = exc.reason or exc.strerror or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc).lower():
            raise ConfigError("server.tls_key", f"{key} is not the private key of the certificate in {cert}") from None
        raise ConfigError(
            "server.tls_cert", f"cannot load the certificate {cert} with the key {key}: {reason}"
        ) from None
    return ctx


def _read(key: str, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None
