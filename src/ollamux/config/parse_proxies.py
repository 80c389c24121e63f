"""`server.trusted_proxies` and `server.forwarded_header`: which peers may say who the client is, and in which header.

As nginx's `set_real_ip_from` / `real_ip_header` and uvicorn's `--forwarded-allow-ips`: only a request whose
peer is in one of these networks has its forwarding header read (guard/client_addr.py). Nothing is trusted
by default, since any client can send an X-Forwarded-For.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Network, IPv6Network

from .node import Node
from .settings import ConfigError, ForwardedHeader

__all__ = ["PROXY_KEYS", "parse_proxies"]

PROXY_KEYS = frozenset({"trusted_proxies", "forwarded_header"})
_HEADERS: dict[str, ForwardedHeader] = {"x-forwarded-for": "x-forwarded-for", "forwarded": "forwarded"}


def parse_proxies(server: Node) -> tuple[tuple[IPv4Network | IPv6Network, ...], ForwardedHeader]:
    """(trusted networks, the header they write): an address is a network of one (`10.0.0.5` = `/32`)."""
    networks: list[IPv4Network | IPv6Network] = []
    for i, entry in enumerate(server.str_list("trusted_proxies")):
        key = f"{server.key('trusted_proxies')}[{i}]"
        text = entry.strip()
        try:
            networks.append(ipaddress.ip_network(text.strip("[]") if "/" not in text else text))
        except ValueError as exc:
            loose = _loose(text)
            hint = (
                f" (did you mean {loose}?)"
                if loose
                else " (an address such as 10.0.0.5 or a network such as 10.0.0.0/8)"
            )
            raise ConfigError(key, f"'{entry}' is not an IP address or network: {exc}{hint}") from None
    name = (server.opt_str("forwarded_header") or "x-forwarded-for").strip().lower()
    header = _HEADERS.get(name)
    if header is None:
        raise ConfigError(
            server.key("forwarded_header"), f"'{name}' is not a forwarding header (use x-forwarded-for or forwarded)"
        )
    return tuple(networks), header


def _loose(text: str) -> str | None:
    """The network an entry with host bits set names (`10.0.0.1/8` -> `10.0.0.0/8`): a likely slip, shown
    rather than taken, since the operator may have meant the one address."""
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return None
