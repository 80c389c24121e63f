"""The HTTPS server's SSLContext, from `server.tls_cert` and `server.tls_key`.

Loaded before the server listens, so a missing, unreadable or wrong file is one ConfigError that names
the file and what is wrong with it, not an `ssl.SSLError` traceback out of the event loop.

A renewed certificate at the same paths (certbot, cert-manager: both files replaced every few weeks) is served
to every new connection from the handshake after the change, with no restart and no SIGHUP: each handshake
compares the two files' stat (two syscalls, nothing beside the handshake's own cost) and, when they changed,
loads them into a fresh context that the handshake switches to (`sni_callback`, which OpenSSL calls on every
ClientHello, with a server name or without). Connections already open keep theirs. A pair that does not load
(a key that is not the certificate's, a file caught half written) leaves the previous certificate serving and
is said once per change of the files.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

from .config import ConfigError, ServerSettings

__all__ = ["server_context"]

log = logging.getLogger("ollamux")

Stamp = tuple[tuple[int, int, int, int], ...]  # per file: device, inode, size, mtime in ns


def server_context(server: ServerSettings) -> ssl.SSLContext | None:
    """A server-side context (TLS 1.2 or later, ALPN http/1.1) that follows renewals of its files; None when
    TLS is not configured."""
    cert, key = server.tls_cert, server.tls_key
    if cert is None or key is None:
        return None
    stamp = _stamp(cert, key)
    ctx = _load(cert, key)
    ctx.sni_callback = _Renewals(cert, key, ctx, stamp)
    return ctx


def _load(cert: Path, key: Path) -> ssl.SSLContext:
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


def _stamp(*paths: Path) -> Stamp:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append((0, 0, -1, 0))  # gone for a moment (a rename in progress): a change like any other
            continue
        out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class _Renewals:
    """The listening context's `sni_callback`: switches each new handshake to the context of the files as
    they are now (see the module docstring)."""

    def __init__(self, cert: Path, key: Path, first: ssl.SSLContext, stamp: Stamp) -> None:
        self.cert, self.key = cert, key
        self.first = first
        self.current = first
        self.stamp = stamp  # of the files `current` was loaded from, or of the last pair that failed

    def __call__(self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext) -> None:
        stamp = _stamp(self.cert, self.key)
        if stamp != self.stamp:
            self.stamp = stamp  # tried once per change of the files, whatever comes of it
            try:
                self.current = _load(self.cert, self.key)
            except ConfigError as exc:
                log.error("TLS: %s; still serving the previous certificate until the files change again", exc)
            else:
                log.warning("TLS: %s changed; new connections get the certificate it holds now", self.cert)
        if self.current is not self.first:
            conn.context = self.current
        return None
