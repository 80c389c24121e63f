"""Hostile forwarding headers behind `server.trusted_proxies`: one client written two ways (an IPv4-mapped
IPv6 address, as a dual-stack proxy writes it) is one client; a hop whose "port" is not a port is garbage;
a chain of 200 hops, spaces and case variations, and an untrusted peer, over a real socket."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import httpx
import pytest

from ollamux.guard.client_addr import TrustedProxies, client_address, parse_node

from .conftest import ProxyFactory, basic_config
from .fakes.openai_upstream import FakeOpenAI
from .servers import log_row

PRIVATE = TrustedProxies([ip_network(n) for n in ("10.0.0.0/8", "fd00::/8", "127.0.0.1/32")])
FORWARDED = TrustedProxies(PRIVATE.networks, "forwarded")
PEER = "10.0.0.1"
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def xff(*lines: str, peer: str = PEER) -> str | None:
    return client_address(peer, lines, PRIVATE, forwarded=False)


def fwd(*lines: str, peer: str = PEER) -> str | None:
    return client_address(peer, lines, FORWARDED, forwarded=True)


# ------------------------------------------------------------------------------------- one client, one name
@pytest.mark.parametrize(
    ("lines", "client"),
    [
        (("::ffff:203.0.113.7",), "203.0.113.7"),
        (("::FFFF:203.0.113.7, 10.0.0.9",), "203.0.113.7"),
        (("[::ffff:203.0.113.7]:4711",), "203.0.113.7"),
        (("::ffff:cb00:7107",), "203.0.113.7"),  # the same address in hex groups
        (("::ffff:10.0.0.9",), "10.0.0.9"),  # every hop trusted: the leftmost, still as IPv4
    ],
)
def test_an_ipv4_mapped_hop_is_the_ipv4_client(lines: tuple[str, ...], client: str) -> None:
    assert xff(*lines) == client


def test_an_ipv4_mapped_hop_in_forwarded_is_the_ipv4_client() -> None:
    assert fwd('for="[::ffff:203.0.113.7]:4711"') == "203.0.113.7"


# ------------------------------------------------------------------------------------- garbage stays garbage
@pytest.mark.parametrize(
    "hop",
    [
        "203.0.113.7:٨٠",  # Arabic-Indic digits: str.isdigit() says yes, no proxy writes them
        "203.0.113.7:99999",  # beyond 65535
        "[2001:db8::1]:٤٤٣",
        "[2001:db8::1]:70000",
    ],
)
def test_a_hop_whose_port_is_not_a_port_is_not_an_address(hop: str) -> None:
    assert parse_node(hop) is None
    assert xff(f"198.51.100.1, {hop}") == PEER  # the client is not known: counted as the peer's


@pytest.mark.parametrize("hop", ["203.0.113.7:0", "203.0.113.7:65535", "[2001:db8::1]:443", "203.0.113.7:_x1"])
def test_real_ports_still_parse(hop: str) -> None:
    assert parse_node(hop) is not None


# ------------------------------------------------------------------------------------- over a real socket
@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def _config(upstream: str, **server: Any) -> dict[str, Any]:
    cfg = basic_config(upstream)
    cfg["limits"] = {"requests_per_minute": 1, "burst": 1}
    cfg["server"] = {"trusted_proxies": ["127.0.0.1/32"], **server}
    return cfg


def _chat(http: httpx.Client, url: str, rid: str, **headers: str) -> httpx.Response:
    return http.post(url + "/api/chat", json=CHAT, headers={"x-request-id": rid, **headers})


def test_mapped_and_plain_spellings_of_one_client_share_one_bucket_and_one_name(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, http: httpx.Client, tmp_path: Path
) -> None:
    url = start_proxy(_config(fake_openai[1]))
    assert _chat(http, url, "m-1", **{"X-Forwarded-For": "203.0.113.9"}).status_code == 200
    again = _chat(http, url, "m-2", **{"X-Forwarded-For": "::ffff:203.0.113.9"})
    assert again.status_code == 429, again.text  # the same client: its one request a minute is spent
    assert "rate limit exceeded for client 203.0.113.9" in again.json()["error"]
    assert log_row(tmp_path / "requests.sqlite", "m-2")["client"] == "203.0.113.9"


def test_two_hundred_hops_spaces_and_case_over_a_real_socket(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, http: httpx.Client, tmp_path: Path
) -> None:
    url = start_proxy(_config(fake_openai[1]))
    spoofed = ", ".join(f"198.51.100.{i % 250}" for i in range(200))  # what the client wrote itself
    r = _chat(http, url, "h-1", **{"x-FORWARDED-for": f"{spoofed} ,\t2001:DB8::7"})
    assert r.status_code == 200
    assert log_row(tmp_path / "requests.sqlite", "h-1")["client"] == "2001:db8::7"
    # 200 hops all trusted: more than any real chain, not believed: the peer's
    r = _chat(http, url, "h-2", **{"X-Forwarded-For": ", ".join(["127.0.0.1"] * 200)})
    assert r.status_code == 200
    assert log_row(tmp_path / "requests.sqlite", "h-2")["client"] == "127.0.0.1"
    # garbage from the trusted proxy: the peer's (its bucket is spent now: 429, in Ollama's envelope)
    r = _chat(http, url, "h-3", **{"X-Forwarded-For": "<script>, not-an-ip"})
    assert r.status_code == 429 and "rate limit exceeded for client 127.0.0.1" in r.json()["error"]


def test_an_untrusted_peer_cannot_name_itself(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, http: httpx.Client, tmp_path: Path
) -> None:
    url = start_proxy(_config(fake_openai[1], trusted_proxies=["10.9.9.9"]))
    assert _chat(http, url, "u-1", **{"X-Forwarded-For": "203.0.113.1"}).status_code == 200
    r = _chat(http, url, "u-2", **{"X-Forwarded-For": "203.0.113.2", "Forwarded": "for=203.0.113.3"})
    assert r.status_code == 429  # both counted as the peer's
    assert log_row(tmp_path / "requests.sqlite", "u-2")["client"] == "127.0.0.1"
