"""The client's address behind trusted reverse proxies (`server.trusted_proxies`).

Behind nginx or an ingress every request comes from the proxy, so per-client limits and the request log
would see one client. A proxy says who its client was in X-Forwarded-For (or RFC 7239 `Forwarded: for=`),
appending the address it saw to what it received. Only what trusted hops wrote is believed, so the list is
read from the right: each trusted proxy is skipped, and the first address that is not one is the client (the
left part came from the client and may say anything). That is nginx's `real_ip_recursive on` and uvicorn's
`--forwarded-allow-ips`.

One header is read, the one the operator's proxy writes (`server.forwarded_header`): nginx passes a
`Forwarded` it does not manage through untouched, so reading both would let any client name itself.

A hop that is not an address (`unknown`, an obfuscated `_id`, garbage) leaves the client unknown: the
request is then counted as the peer's, as without a header.

`client_address` is pure; the guard middleware calls `TrustedProxies.resolve` once per request, and every
reader (limits, request log, operator log) takes the result from the request with `client_of`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from aiohttp import web

from ..config import Settings
from ..config.settings import ForwardedHeader

__all__ = [
    "CLIENT_ADDR",
    "MAX_HOPS",
    "TrustedProxies",
    "client_address",
    "client_of",
    "forwarded_for",
    "parse_node",
    "x_forwarded_for",
]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

CLIENT_ADDR = web.RequestKey("ollamux_client_addr", str)  # set only when a trusted proxy named another client
# more trusted hops than any real chain of proxies has: not believed (the client stays the peer)
MAX_HOPS = 30
_OBFUSCATED_PORT = re.compile(r"_[A-Za-z0-9._-]+")
_PORT = re.compile(r"[0-9]{1,5}")


def parse_node(text: str) -> IPAddress | None:
    """One hop's address, as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
    `[2001:db8::1]`, `[2001:db8::1]:4711` (a port, obfuscated or not, and a zone are dropped; an IPv4-mapped
    `::ffff:192.0.2.1` is the IPv4 address). None for anything else: `unknown`, an obfuscated `_hidden`, a name,
    a port that is not one, garbage."""
    t = text.strip()
    if t.startswith("["):
        end = t.find("]")
        if end < 0 or not _port_ok(t[end + 1 :]):
            return None
        t = t[1:end]
    elif t.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has more colons
        t, port = t.split(":")
        if not _port_ok(":" + port):
            return None
    # an IPv6 zone (`fe80::1%eth0`) names an interface of the hop that wrote it, any text: not kept
    try:
        ip = ipaddress.ip_address(t.split("%", 1)[0])
    except ValueError:
        return None
    # a dual-stack proxy writes an IPv4 client as ::ffff:a.b.c.d: the same client, so the same name (its
    # bucket and log rows), the IPv4 one
    mapped = ip.ipv4_mapped if isinstance(ip, IPv6Address) else None
    return mapped if mapped is not None else ip


def _port_ok(rest: str) -> bool:
    """What follows an address: nothing, or `:` and a port (RFC 7239 allows an obfuscated `_port`)."""
    if not rest:
        return True
    port = rest[1:]
    if rest[0] != ":":
        return False
    # ASCII digits only: str.isdigit() also takes other scripts' digits, which no proxy writes
    return bool(_PORT.fullmatch(port) and int(port) <= 65535) or bool(_OBFUSCATED_PORT.fullmatch(port))


def x_forwarded_for(values: Iterable[str]) -> list[str]:
    """The hops of every X-Forwarded-For line, in order (several lines are one comma-separated list)."""
    return [hop.strip() for value in values for hop in value.split(",") if hop.strip()]


def forwarded_for(values: Iterable[str]) -> list[str] | None:
    """The `for=` of each element of every Forwarded line, in order; None when a line is malformed. An
    element without `for=` is an unknown hop (`unknown`)."""
    hops: list[str] = []
    for value in values:
        elements = _split_quoted(value, ",")
        if elements is None:
            return None
        for element in elements:
            if not element.strip():
                continue  # an empty list element (RFC 9110 5.6.1)
            found = "unknown"
            pairs = _split_quoted(element, ";")
            if pairs is None:
                return None
            for pair in pairs:
                if not pair.strip():
                    continue  # `for=x;` : an empty pair
                name, eq, raw = pair.strip().partition("=")
                if not eq or not name.strip():
                    return None
                if name.strip().lower() == "for":
                    unquoted = _unquote(raw.strip())
                    if unquoted is None:
                        return None
                    found = unquoted
            hops.append(found)
    return hops


def _split_quoted(text: str, sep: str) -> list[str] | None:
    """`text` split at `sep` outside quoted strings; None for an unterminated quote."""
    parts: list[str] = []
    start, quoted, escaped = 0, False, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append(text[start:i])
            start = i + 1
    if quoted:
        return None
    parts.append(text[start:])
    return parts


def _unquote(value: str) -> str | None:
    if not value.startswith('"'):
        return None if '"' in value or not value else value
    if len(value) < 2 or not value.endswith('"'):
        return None
    return re.sub(r"\\(.)", r"\1", value[1:-1])


class TrustedProxies:
    """The trusted networks and the header they write, built once from the settings."""

    def __init__(self, networks: Sequence[IPNetwork], header: ForwardedHeader = "x-forwarded-for") -> None:
        self.networks = tuple(networks)
        self.header = "Forwarded" if header == "forwarded" else "X-Forwarded-For"

    @classmethod
    def of(cls, settings: Settings) -> TrustedProxies | None:
        """None when no proxy is trusted: the middleware then reads no header at all."""
        server = settings.server
        return cls(server.trusted_proxies, server.forwarded_header) if server.trusted_proxies else None

    def trusts(self, addr: IPAddress) -> bool:
        # a dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d; 10.0.0.0/8 must still match it
        mapped = addr.ipv4_mapped if isinstance(addr, IPv6Address) else None
        return any(addr in net or (mapped is not None and mapped in net) for net in self.networks)

    def resolve(self, request: web.Request) -> None:
        """Put the client's address on the request when a trusted peer names another one."""
        values = request.headers.getall(self.header, ())
        client = client_address(request.remote, values, self, forwarded=self.header == "Forwarded")
        if client is not None and client != request.remote:
            request[CLIENT_ADDR] = client


def client_address(peer: str | None, values: Sequence[str], trusted: TrustedProxies, *, forwarded: bool) -> str | None:
    """The client of a request from `peer` carrying the header lines `values` (X-Forwarded-For, or Forwarded
    with `forwarded`): the rightmost hop that is not a trusted proxy, read only when the peer is trusted.
    Falls back to `peer` for an untrusted peer, no header, a malformed one, a hop that is not an address
    and a chain of more than MAX_HOPS trusted proxies. All hops trusted: the leftmost is the client (a client
    inside a trusted network)."""
    if peer is None or not values:
        return peer
    peer_ip = parse_node(peer)
    if peer_ip is None or not trusted.trusts(peer_ip):
        return peer
    hops = forwarded_for(values) if forwarded else x_forwarded_for(values)
    if not hops:
        return peer
    client = peer
    for i, hop in enumerate(reversed(hops)):
        if i == MAX_HOPS:
            return peer
        ip = parse_node(hop)
        if ip is None:
            return peer
        client = str(ip)
        if not trusted.trusts(ip):
            return client
    return client


def client_of(request: web.Request) -> str | None:
    """The request's client address: what a trusted proxy said (`TrustedProxies.resolve`), else the peer."""
    found = request.get(CLIENT_ADDR)
    return found if found is not None else request.remote
