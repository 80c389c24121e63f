"""The client behind trusted reverse proxies (`server.trusted_proxies`, guard/client_addr.py).

The pure `client_address` on the header shapes proxies and clients send; the config parser; then over real
sockets: two clients behind one trusted proxy get their own rate limits and log rows, the same headers are
ignored without trusted proxies and from an untrusted peer, a reload changes the trusted set, and the Host
guard still refuses a foreign Host whatever a proxy says.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import httpx
import pytest

from ollamux import create_app
from ollamux.config import ConfigError, parse_settings
from ollamux.guard.client_addr import MAX_HOPS, TrustedProxies, client_address, forwarded_for, parse_node
from ollamux.reload import reload, restart_only
from ollamux.state import STATE

from .compose_nginx import NGINX, compose_nginx
from .conftest import ProxyFactory, basic_config
from .fakes.openai_upstream import FakeOpenAI
from .servers import LoopThread, log_row
from .test_guard_auth import ALICE, keyed_config

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": False}
PRIVATE = TrustedProxies([ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "fd00::/8", "127.0.0.1/32")])
PEER = "10.0.0.1"  # the proxy the request came from


def xff(*lines: str, peer: str | None = PEER, trusted: TrustedProxies = PRIVATE) -> str | None:
    return client_address(peer, lines, trusted, forwarded=False)


def fwd(*lines: str, peer: str | None = PEER) -> str | None:
    return client_address(peer, lines, PRIVATE, forwarded=True)


# ------------------------------------------------------------------------------------- the pure function
@pytest.mark.parametrize(
    ("lines", "client"),
    [
        (("203.0.113.7",), "203.0.113.7"),
        (("  203.0.113.7 ,   10.0.0.2  ",), "203.0.113.7"),  # spaces around hops; the trusted hop skipped
        # what a client sent itself is on the left: the rightmost untrusted hop wins, the spoof is ignored
        (("6.6.6.6, 203.0.113.7, 10.0.0.2",), "203.0.113.7"),
        # several header lines are one list, in order
        (("6.6.6.6, 198.51.100.1", "10.0.0.2"), "198.51.100.1"),
        (("6.6.6.6", "198.51.100.1", "10.0.0.3", "10.0.0.2"), "198.51.100.1"),
        (("203.0.113.7,,10.0.0.2,",), "203.0.113.7"),  # empty list elements are ignored (RFC 9110 5.6.1)
        (("203.0.113.7:51234",), "203.0.113.7"),  # a port some proxies add
        (("2001:DB8::1",), "2001:db8::1"),  # written the canonical way, as request.remote writes it
        (("[2001:db8::1]:443, fd00::5",), "2001:db8::1"),
        (("[2001:db8::1]",), "2001:db8::1"),
        # junk on the left of the first untrusted hop is never read
        (("not an address, 203.0.113.7",), "203.0.113.7"),
        # every hop trusted: a client inside the trusted networks, the leftmost
        (("10.1.1.1, 10.0.0.2",), "10.1.1.1"),
        (("172.16.5.5",), "172.16.5.5"),
    ],
)
def test_x_forwarded_for_names_the_rightmost_untrusted_hop(lines: tuple[str, ...], client: str) -> None:
    assert xff(*lines) == client


@pytest.mark.parametrize(
    "lines",
    [
        ("unknown",),
        ("_hidden",),
        ("not-an-ip",),
        ("203.0.113.7, garbage",),  # a trusted hop passed on junk: the client is not known
        ("203.0.113.7:99999999",),
        ("[2001:db8::1",),
        ("[2001:db8::1]x",),
        ("host.example:80",),
        ("",),
        (" , ",),
    ],
)
def test_a_hop_that_is_no_address_leaves_the_peer(lines: tuple[str, ...]) -> None:
    assert xff(*lines) == PEER


def test_headers_from_an_untrusted_peer_are_ignored() -> None:
    assert xff("203.0.113.7", peer="198.51.100.9") == "198.51.100.9"
    assert xff("203.0.113.7", peer="10.0.0.1", trusted=TrustedProxies([ip_network("10.0.0.2/32")])) == "10.0.0.1"
    assert xff("203.0.113.7", trusted=TrustedProxies([])) == PEER
    assert xff(peer=PEER) == PEER  # a trusted peer without the header
    assert xff("203.0.113.7", peer=None) is None  # no peer address (a Unix socket)
    assert xff("203.0.113.7", peer="not-an-address") == "not-an-address"


def test_an_ipv4_peer_on_a_dual_stack_socket_is_trusted_by_its_ipv4_network() -> None:
    assert xff("203.0.113.7", peer="::ffff:10.0.0.1") == "203.0.113.7"
    assert xff("203.0.113.7", peer="fd00::1") == "203.0.113.7"
    assert xff("203.0.113.7", peer="::ffff:8.8.8.8") == "::ffff:8.8.8.8"


def test_too_many_trusted_hops_are_not_believed() -> None:
    def chain(n: int) -> str:
        return ", ".join(["203.0.113.7", *(f"10.0.1.{i}" for i in range(1, n + 1))])

    assert xff(chain(MAX_HOPS - 1)) == "203.0.113.7"
    assert xff(chain(MAX_HOPS)) == PEER  # the client is more than MAX_HOPS hops away
    # many hops the client wrote itself are never read: the proxy's own hop comes first
    assert xff(", ".join(["6.6.6.6"] * 1000) + ", 203.0.113.7") == "203.0.113.7"


@pytest.mark.parametrize(
    ("lines", "client"),
    [
        (("for=192.0.2.60;proto=http;by=203.0.113.43",), "192.0.2.60"),
        (('for="[2001:db8:cafe::17]:4711"',), "2001:db8:cafe::17"),
        (('For="[2001:DB8::1]"',), "2001:db8::1"),  # names are case-insensitive
        (('for="192.0.2.60:4711"',), "192.0.2.60"),
        (('for="192.0.2.60:_abc"',), "192.0.2.60"),  # an obfuscated port
        (("for=192.0.2.43, for=198.51.100.17",), "198.51.100.17"),
        (("for=192.0.2.43", "for=198.51.100.17;proto=https", "for=10.0.0.2"), "198.51.100.17"),
        (('for=192.0.2.1;by="a, b; c"',), "192.0.2.1"),  # separators inside a quoted string
        ((r'by="x\"y";for=192.0.2.1',), "192.0.2.1"),  # an escaped quote
        (("for=192.0.2.1;",), "192.0.2.1"),
        (("for=unknown, for=203.0.113.7",), "203.0.113.7"),  # an unknown hop left of the client is not read
        ((" for = 192.0.2.1 ",), "192.0.2.1"),
    ],
)
def test_forwarded_for_names_the_rightmost_untrusted_hop(lines: tuple[str, ...], client: str) -> None:
    assert fwd(*lines) == client


@pytest.mark.parametrize(
    "lines",
    [
        ("for=unknown",),
        ('for="_gazonk"',),  # an obfuscated identifier (RFC 7239 6.3): not an address
        ("for=_hidden",),
        ("proto=https",),  # an element without for=: that hop did not say
        ('for="[2001:db8::1',),  # an unterminated quote
        ('for="[2001:db8::1]:4711',),
        ("for",),
        ("=x",),
        ("for=a=b",),
        ('for=1.2"3',),
        ("for=",),
        ("203.0.113.7",),  # an X-Forwarded-For value is no Forwarded element
        ("for=203.0.113.7, garbage",),
    ],
)
def test_a_malformed_forwarded_leaves_the_peer(lines: tuple[str, ...]) -> None:
    assert fwd(*lines) == PEER


def test_forwarded_elements_are_read_in_order() -> None:
    assert forwarded_for(['for=a;by=b, for="c,d"', "proto=https"]) == ["a", "c,d", "unknown"]
    assert forwarded_for(['for="a']) is None


@pytest.mark.parametrize(
    ("text", "addr"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("1.2.3.4:80", "1.2.3.4"),
        ("[::1]:80", "::1"),
        ("::1", "::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("[fe80::1%25eth0]:80", "fe80::1"),
    ],
)
def test_parse_node(text: str, addr: str) -> None:
    assert str(parse_node(text)) == addr


# -------------------------------------------------------------------------------------------- config
def _server(**server: Any) -> Any:
    return parse_settings({"server": server}, {}).server


def test_config_reads_addresses_and_networks() -> None:
    s = _server(trusted_proxies=["10.0.0.0/8", "127.0.0.1", "::1", "[fd00::5]", "fd00::/8"])
    assert [str(n) for n in s.trusted_proxies] == ["10.0.0.0/8", "127.0.0.1/32", "::1/128", "fd00::5/128", "fd00::/8"]
    assert s.forwarded_header == "x-forwarded-for"
    assert _server(trusted_proxies="10.0.0.0/8", forwarded_header="Forwarded").forwarded_header == "forwarded"
    assert _server().trusted_proxies == ()  # nothing trusted by default


@pytest.mark.parametrize(
    ("server", "key", "text"),
    [
        ({"trusted_proxies": ["10.0.0.0/8", "nginx"]}, "server.trusted_proxies[1]", "'nginx' is not an IP address"),
        ({"trusted_proxies": ["10.0.0.1/8"]}, "server.trusted_proxies[0]", "did you mean 10.0.0.0/8?"),
        ({"trusted_proxies": ["10.0.0.0/33"]}, "server.trusted_proxies[0]", "'10.0.0.0/33'"),
        ({"trusted_proxies": [["10.0.0.0/8"]]}, "server.trusted_proxies[0]", "must be a string"),
        ({"forwarded_header": "x-real-ip"}, "server.forwarded_header", "use x-forwarded-for or forwarded"),
        ({"trusted_proxy": ["10.0.0.0/8"]}, "server.trusted_proxy", "unknown key"),
    ],
)
def test_config_errors_name_the_entry(server: dict[str, Any], key: str, text: str) -> None:
    with pytest.raises(ConfigError) as err:
        _server(**server)
    assert err.value.key == key and text in err.value.message, str(err.value)


# ------------------------------------------------------------------------------------ over real sockets
@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


@pytest.fixture
def other_peer() -> Iterator[httpx.Client]:
    """A client whose connections come from 127.0.0.2 (all of 127/8 is loopback on Linux)."""
    with httpx.Client(timeout=10, transport=httpx.HTTPTransport(local_address="127.0.0.2")) as c:
        yield c


def _limited(upstream: str, **server: Any) -> dict[str, Any]:
    cfg = basic_config(upstream)
    cfg["limits"] = {"requests_per_minute": 1, "burst": 1}  # one request per client, then 429 for a minute
    if server:
        cfg["server"] = server
    return cfg


def _chat(http: httpx.Client, url: str, rid: str, **headers: str) -> httpx.Response:
    return http.post(url + "/api/chat", json=CHAT, headers={"x-request-id": rid, **headers})


def _client_of(tmp_path: Path, rid: str) -> Any:
    return log_row(tmp_path / "requests.sqlite", rid)["client"]


def test_two_clients_behind_one_trusted_proxy_have_their_own_limits_and_rows(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, http: httpx.Client, tmp_path: Path
) -> None:
    url = start_proxy(_limited(fake_openai[1], trusted_proxies=["127.0.0.1/32"]))
    a, b = {"X-Forwarded-For": "203.0.113.1"}, {"X-Forwarded-For": "6.6.6.6, 203.0.113.2"}
    assert _chat(http, url, "a-1", **a).status_code == 200
    assert _chat(http, url, "b-1", **b).status_code == 200  # another client: its own bucket
    refused = _chat(http, url, "a-2", **a)
    assert refused.status_code == 429
    assert "rate limit exceeded for client 203.0.113.1" in refused.json()["error"]
    assert _chat(http, url, "b-2", **b).status_code == 429
    assert _client_of(tmp_path, "a-1") == "203.0.113.1"
    assert _client_of(tmp_path, "b-1") == "203.0.113.2"
    assert _client_of(tmp_path, "a-2") == "203.0.113.1"  # a refusal's row too


def test_without_trusted_proxies_the_headers_are_ignored(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, http: httpx.Client, tmp_path: Path
) -> None:
    url = start_proxy(_limited(fake_openai[1]))
    assert _chat(http, url, "a-1", **{"X-Forwarded-For": "203.0.113.1"}).status_code == 200
    refused = _chat(http, url, "b-1", **{"X-Forwarded-For": "203.0.113.2", "Forwarded": "for=203.0.113.3"})
    assert refused.status_code == 429 and "client 127.0.0.1:" in refused.json()["error"]  # one shared limit
    assert _client_of(tmp_path, "a-1") == "127.0.0.1"
    assert _client_of(tmp_path, "b-1") == "127.0.0.1"


def test_a_spoofed_header_from_an_untrusted_peer_is_ignored(
    fake_openai: tuple[FakeOpenAI, str],
    start_proxy: ProxyFactory,
    http: httpx.Client,
    other_peer: httpx.Client,
    tmp_path: Path,
) -> None:
    url = start_proxy(_limited(fake_openai[1], trusted_proxies=["127.0.0.2"]))  # only 127.0.0.2 is the proxy
    assert _chat(http, url, "direct-1", **{"X-Forwarded-For": "203.0.113.1"}).status_code == 200
    refused = _chat(http, url, "direct-2", **{"X-Forwarded-For": "203.0.113.2"})
    assert refused.status_code == 429 and "client 127.0.0.1:" in refused.json()["error"]
    assert _client_of(tmp_path, "direct-1") == "127.0.0.1"
    # the same header through the trusted proxy names the client
    assert _chat(other_peer, url, "proxied", **{"X-Forwarded-For": "203.0.113.1"}).status_code == 200
    assert _client_of(tmp_path, "proxied") == "203.0.113.1"


def test_forwarded_is_read_when_configured_and_then_only_it(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, http: httpx.Client, tmp_path: Path
) -> None:
    url = start_proxy(_limited(fake_openai[1], trusted_proxies=["127.0.0.1"], forwarded_header="forwarded"))
    assert _chat(http, url, "v6", Forwarded='for="[2001:db8::7]:4711";proto=https').status_code == 200
    assert _client_of(tmp_path, "v6") == "2001:db8::7"
    # an X-Forwarded-For the proxy does not manage is not believed: counted as the proxy's own
    assert _chat(http, url, "x-1", **{"X-Forwarded-For": "203.0.113.1"}).status_code == 200
    assert _chat(http, url, "x-2", **{"X-Forwarded-For": "203.0.113.2"}).status_code == 429
    assert _client_of(tmp_path, "x-2") == "127.0.0.1"


def test_tokens_are_charged_to_the_client_behind_the_proxy(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, http: httpx.Client
) -> None:
    cfg = basic_config(fake_openai[1])
    cfg["server"] = {"trusted_proxies": ["127.0.0.1"]}
    cfg["limits"] = {"tokens_per_minute": 1, "token_burst": 10}  # one answer (14 tokens) empties a bucket
    url = start_proxy(cfg)
    a, b = {"X-Forwarded-For": "203.0.113.1"}, {"X-Forwarded-For": "203.0.113.2"}
    assert _chat(http, url, "a-1", **a).status_code == 200
    assert _chat(http, url, "a-2", **a).status_code == 429  # a's answer was charged to a, where it is admitted
    assert _chat(http, url, "b-1", **b).status_code == 200


def test_the_operator_log_names_the_client_behind_the_proxy(
    fake_openai: tuple[FakeOpenAI, str],
    start_proxy: ProxyFactory,
    http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = keyed_config(fake_openai[1])
    cfg["server"] = {"trusted_proxies": ["127.0.0.1"]}
    url = start_proxy(cfg)
    caplog.set_level(logging.INFO, logger="ollamux")
    r = http.get(url + "/admin/requests", headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.status_code == 401
    lines = [rec for rec in caplog.records if rec.name == "ollamux.admin" and "/admin/requests" in rec.getMessage()]
    assert [getattr(rec, "client", None) for rec in lines] == ["203.0.113.9"], caplog.text


def test_the_host_guard_still_refuses_a_foreign_host_behind_a_trusted_proxy(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, http: httpx.Client
) -> None:
    cfg = basic_config(fake_openai[1])
    cfg["server"] = {"trusted_proxies": ["127.0.0.1"]}  # loopback bind: the Host guard is on
    url = start_proxy(cfg)
    r = http.post(url + "/api/chat", json=CHAT, headers={"Host": "evil.example", "X-Forwarded-For": "127.0.0.1"})
    assert r.status_code == 403 and "host 'evil.example' is not allowed" in r.json()["error"]
    assert http.post(url + "/api/chat", json=CHAT, headers={"X-Forwarded-For": "203.0.113.1"}).status_code == 200


def test_a_reload_changes_the_trusted_proxies(
    fake_openai: tuple[FakeOpenAI, str], loop_thread: LoopThread, http: httpx.Client
) -> None:
    cfg = {**_limited(fake_openai[1]), "request_log": {"enabled": False}}
    runner, url = loop_thread.start_app(create_app(parse_settings(cfg, dict(os.environ))))
    try:
        state = runner.app[STATE]
        new = parse_settings({**cfg, "server": {"trusted_proxies": ["127.0.0.1"]}}, dict(os.environ))
        assert restart_only(state.settings, new)[1] == []  # not a restart-only key
        loop_thread.run(reload(state, new))
        assert _chat(http, url, "a", **{"X-Forwarded-For": "203.0.113.1"}).status_code == 200
        assert _chat(http, url, "b", **{"X-Forwarded-For": "203.0.113.2"}).status_code == 200
        assert _chat(http, url, "c", **{"X-Forwarded-For": "203.0.113.1"}).status_code == 429
        loop_thread.run(reload(state, parse_settings(cfg, dict(os.environ))))  # trusted no more
        assert _chat(http, url, "d", **{"X-Forwarded-For": "203.0.113.3"}).status_code == 200  # the peer's bucket
        refused = _chat(http, url, "e", **{"X-Forwarded-For": "203.0.113.4"})
        assert refused.status_code == 429 and "client 127.0.0.1:" in refused.json()["error"]
    finally:
        loop_thread.stop_app(runner)


def test_keys_still_name_the_caller_behind_a_proxy(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, http: httpx.Client, tmp_path: Path
) -> None:
    cfg = keyed_config(fake_openai[1], requests_per_minute=1, burst=1)
    cfg["server"] = {"trusted_proxies": ["127.0.0.1"]}
    url = start_proxy(cfg)
    key = {"x-api-key": ALICE}
    assert _chat(http, url, "k-1", **key, **{"X-Forwarded-For": "203.0.113.1"}).status_code == 200
    refused = _chat(http, url, "k-2", **key, **{"X-Forwarded-For": "203.0.113.2"})  # one key, one limit
    assert refused.status_code == 429 and "key 'alice'" in refused.json()["error"]
    assert _client_of(tmp_path, "k-2") == "203.0.113.2"  # the row still says where it came from


# ------------------------------------------------------------------------- live, through the shipped nginx


@pytest.fixture
def nginx_in_front(fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, tmp_path: Path) -> Iterator[str]:
    """deploy/compose/nginx.conf (as bench/scaleout.py renders it for loopback) in front of one ollamux
    that trusts nginx's address, 127.0.0.1, with one request per client and minute."""
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (scripts/debian_tools.sh)")
    port = int(start_proxy(_limited(fake_openai[1], trusted_proxies=["127.0.0.1"])).rsplit(":", 1)[1])
    with compose_nginx(tmp_path, [port] * 3) as url:
        yield url


def test_clients_behind_the_shipped_nginx_are_told_apart(nginx_in_front: str, tmp_path: Path) -> None:
    """nginx appends the address it saw to X-Forwarded-For; ollamux, trusting nginx only, counts and logs
    each client by that address, whatever the client put in the header itself."""
    clients = {
        ip: httpx.Client(timeout=10, transport=httpx.HTTPTransport(local_address=ip))
        for ip in ("127.0.0.2", "127.0.0.3")
    }
    try:
        one, two = clients["127.0.0.2"], clients["127.0.0.3"]
        assert _chat(one, nginx_in_front, "n-1", **{"X-Forwarded-For": "6.6.6.6"}).status_code == 200
        assert _chat(two, nginx_in_front, "n-2").status_code == 200  # its own limit
        refused = _chat(one, nginx_in_front, "n-3", **{"X-Forwarded-For": "7.7.7.7"})  # a new spoof: same client
        assert refused.status_code == 429 and "client 127.0.0.2:" in refused.json()["error"]
        assert [_client_of(tmp_path, r) for r in ("n-1", "n-2", "n-3")] == ["127.0.0.2", "127.0.0.3", "127.0.0.2"]
    finally:
        for c in clients.values():
            c.close()
