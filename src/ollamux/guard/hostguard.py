"""Ollama's DNS-rebinding guard: on a loopback bind, the Host header must name this machine.

A web page on evil.example whose name is re-pointed at 127.0.0.1 reaches a loopback server with
`Host: evil.example`; refusing such Hosts keeps browsers on other sites away from the API. The rule is
Ollama's `allowedHostsMiddleware`: empty, localhost, an IP literal, the machine's hostname, or a name
under .localhost, .local or .internal (plus configured names, for a reverse proxy in front).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

__all__ = ["HostGuard", "is_loopback_bind"]

_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


def is_loopback_bind(host: str) -> bool:
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name part of a Host header: `[::1]:8080` -> `::1`, `Example.local:80` -> `example.local`."""
    h = header.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h[1:end] if end > 0 else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


class HostGuard:
    def __init__(self, extra_hosts: Iterable[str] = ()) -> None:
        self.hostname = socket.gethostname().lower()
        self.extra = frozenset(h.strip().lower() for h in extra_hosts)
        self._cache: dict[str, bool] = {}

    def allowed(self, header: str) -> bool:
        hit = self._cache.get(header)
        if hit is not None:
            return hit
        ok = self._check(host_name(header))
        if len(self._cache) < 1024:  # real clients use a handful of Host values; junk is not cached
            self._cache[header] = ok
        return ok

    def _check(self, name: str) -> bool:
        if name in ("", "localhost") or name == self.hostname or name in self.extra:
            return True
        if name.endswith(_LOCAL_SUFFIXES):
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True  # an IP literal cannot be re-pointed by DNS
