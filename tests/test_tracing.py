"""OpenTelemetry traces, exported over OTLP/HTTP to a real receiver on loopback: a SERVER span per request,
a CLIENT span per upstream attempt (so retries and fallbacks are visible), W3C trace context in and out;
with tracing off, opentelemetry is not even imported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ollamux import create_app
from ollamux.config import ConfigError, parse_settings
from ollamux.masks import mask_url

from .fakes.flaky_upstream import Flaky
from .fakes.openai_upstream import FakeOpenAI
from .fakes.otlp_receiver import OtlpReceiver, Span
from .servers import LoopThread

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def receiver(loop_thread: LoopThread) -> Iterator[tuple[OtlpReceiver, str]]:
    rx = OtlpReceiver()
    runner, url = loop_thread.start_app(rx.app())
    yield rx, url
    loop_thread.stop_app(runner)


def _run(
    loop_thread: LoopThread, tmp: Path, config: dict[str, Any], requests: list[dict[str, Any]]
) -> list[httpx.Response]:
    """Serve `config`, send `requests` (httpx.request kwargs), then stop the app: its shutdown exports every
    span still queued, so the receiver holds them all when this returns."""
    config = {**config, "request_log": {"path": str(tmp / "requests.sqlite")}}
    runner, url = loop_thread.start_app(create_app(parse_settings(config, dict(os.environ))))
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            return [http.request(**r) for r in requests]
    finally:
        loop_thread.stop_app(runner)


def _tracing(url: str) -> dict[str, Any]:
    return {"otlp_endpoint": f"{url}/v1/traces", "service_name": "ollamux-test"}


def _sent(fake: FakeOpenAI, rid: str) -> dict[str, str]:
    """The headers ollamux sent upstream for request `rid`, names lower-cased."""
    for c in reversed(fake.requests):
        headers = {k.lower(): v for k, v in c.headers.items()}
        if headers.get("x-request-id") == rid:
            return headers
    raise AssertionError(f"no upstream request for {rid}")


def _server_span(rx: OtlpReceiver, rid: str) -> tuple[Span, list[Span]]:
    """The request's SERVER span (found by its request id) and its CLIENT children, in attempt order."""
    [server] = [s for s in rx.spans if s.kind == "server" and s.attributes.get("ollamux.request_id") == rid]
    children = [s for s in rx.of_trace(server.trace_id) if s.parent_id == server.span_id]
    assert all(c.kind == "client" for c in children)
    return server, children


def test_a_retry_on_the_second_replica_is_two_attempt_spans(
    loop_thread: LoopThread, receiver: tuple[OtlpReceiver, str], tmp_path: Path
) -> None:
    rx, rx_url = receiver
    bad = Flaky(loop_thread, name="bad", default="500").start()
    good = Flaky(loop_thread, name="good").start()
    try:
        config = {
            "tracing": _tracing(rx_url),
            "backends": {
                "pool": {"url": f"http://user:hunter22@127.0.0.1:{bad.port}/v1", "urls": [f"{good.url}/v1"]},
            },
            "models": {"m": {"backend": "pool"}},
        }
        [resp] = _run(
            loop_thread,
            tmp_path,
            config,
            [{"method": "POST", "url": "/v1/chat/completions", "json": CHAT, "headers": {"x-request-id": "retry-1"}}],
        )
    finally:
        bad.kill()
        good.kill()
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "hi from good"
    server, attempts = _server_span(rx, "retry-1")
    assert server.name == "POST /v1/chat/completions"
    assert server.service == "ollamux-test"
    assert server.parent_id == ""  # no traceparent came in: a new trace
    assert not server.error
    a = server.attributes
    assert (a["http.request.method"], a["http.route"], a["http.response.status_code"]) == (
        "POST",
        "/v1/chat/completions",
        200,
    )
    assert (a["ollamux.api"], a["gen_ai.request.model"], a["ollamux.backend"]) == ("openai", "m", "pool")
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"], a["ollamux.streamed"]) == (2, 3, False)
    assert [s.attributes["ollamux.attempt"] for s in attempts] == [1, 2]
    first, second = attempts
    assert first.error and first.attributes["http.response.status_code"] == 500
    assert "HTTP 500" in first.message
    assert first.attributes["ollamux.retry"] is False and second.attributes["ollamux.retry"] is True
    assert not second.error and second.attributes["http.response.status_code"] == 200
    assert {s.attributes["ollamux.fallback"] for s in attempts} == {False}
    # the replica that failed, with its credentials masked; the one that answered
    assert first.attributes["url.full"] == f"http://user:***@127.0.0.1:{bad.port}/v1/chat/completions"
    assert second.attributes["url.full"] == f"{good.url}/v1/chat/completions"
    assert all("hunter22" not in str(s) for s in rx.spans)


def test_a_fallback_to_another_model_is_its_own_attempt_span(
    loop_thread: LoopThread, receiver: tuple[OtlpReceiver, str], fake_openai: tuple[FakeOpenAI, str], tmp_path: Path
) -> None:
    rx, rx_url = receiver
    down = Flaky(loop_thread, name="down", default="500").start()
    try:
        config = {
            "tracing": _tracing(rx_url),
            "backends": {"down": {"url": f"{down.url}/v1", "retries": 0}, "fake": {"url": f"{fake_openai[1]}/v1"}},
            "models": {
                "m": {"backend": "down", "fallbacks": ["spare"]},
                "spare": {"backend": "fake", "upstream": "fake-model"},
            },
        }
        [resp] = _run(
            loop_thread,
            tmp_path,
            config,
            [
                {
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "json": CHAT,
                    "headers": {"x-request-id": "fallback-1"},
                }
            ],
        )
    finally:
        down.kill()
    assert resp.status_code == 200, resp.text
    server, attempts = _server_span(rx, "fallback-1")
    assert server.attributes["ollamux.backend"] == "fake"
    assert server.attributes["ollamux.model_served"] == "fake-model"
    assert [(s.attributes["ollamux.backend"], s.attributes["gen_ai.request.model"]) for s in attempts] == [
        ("down", "m"),
        ("fake", "fake-model"),
    ]
    assert [s.attributes["ollamux.fallback"] for s in attempts] == [False, True]
    assert [s.error for s in attempts] == [True, False]


def test_an_incoming_traceparent_is_continued_and_passed_upstream(
    loop_thread: LoopThread, receiver: tuple[OtlpReceiver, str], fake_openai: tuple[FakeOpenAI, str], tmp_path: Path
) -> None:
    rx, rx_url = receiver
    fake, fake_url = fake_openai
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    config = {
        "tracing": _tracing(rx_url),
        "backends": {"fake": {"url": f"{fake_url}/v1"}},
        "models": {"m": {"backend": "fake", "upstream": "fake-model"}},
    }
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"traceparent": f"00-{trace_id}-{parent}-01", "x-request-id": "traced-1"}
    [resp] = _run(
        loop_thread,
        tmp_path,
        config,
        [{"method": "POST", "url": "/v1/chat/completions", "json": body, "headers": headers}],
    )
    assert resp.status_code == 200 and "[DONE]" in resp.text
    server, [attempt] = _server_span(rx, "traced-1")
    assert (server.trace_id, server.parent_id) == (trace_id, parent)
    assert server.attributes["ollamux.streamed"] is True
    assert (server.attributes["gen_ai.usage.input_tokens"], server.attributes["gen_ai.usage.output_tokens"]) == (11, 3)
    version, sent_trace, sent_span, flags = _sent(fake, "traced-1")["traceparent"].split("-")
    assert (version, sent_trace, sent_span, flags) == ("00", trace_id, attempt.span_id, "01")


def test_an_unsampled_parent_sends_nothing_but_still_propagates(
    loop_thread: LoopThread, receiver: tuple[OtlpReceiver, str], fake_openai: tuple[FakeOpenAI, str], tmp_path: Path
) -> None:
    rx, rx_url = receiver
    fake, fake_url = fake_openai
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    config = {
        "tracing": _tracing(rx_url),
        "backends": {"fake": {"url": f"{fake_url}/v1"}},
        "models": {"m": {"backend": "fake", "upstream": "fake-model"}},
    }
    headers = {"traceparent": f"00-{trace_id}-b7ad6b7169203331-00", "x-request-id": "unsampled-1"}
    [resp] = _run(
        loop_thread,
        tmp_path,
        config,
        [{"method": "POST", "url": "/v1/chat/completions", "json": CHAT, "headers": headers}],
    )
    assert resp.status_code == 200
    assert rx.of_trace(trace_id) == []  # the caller decided not to sample: ollamux follows
    sent = _sent(fake, "unsampled-1")["traceparent"]
    assert sent.startswith(f"00-{trace_id}-") and sent.endswith("-00")


_PROBE = textwrap.dedent(
    """
    import asyncio, json, sys
    from aiohttp import ClientSession, web
    from ollamux import create_app
    from ollamux.config import parse_settings

    async def main():
        config = json.loads(sys.argv[1])
        runner = web.AppRunner(create_app(parse_settings(config, {})))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        async with ClientSession() as s:  # a request all the way to a backend that is not there
            async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "m", "messages": []}) as r:
                assert r.status == 502, r.status
        await runner.cleanup()
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("opentelemetry"))))

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("on", [False, True])
def test_tracing_off_never_imports_opentelemetry(tmp_path: Path, on: bool) -> None:
    config: dict[str, Any] = {
        "backends": {"gone": {"url": "http://127.0.0.1:9/v1", "retries": 0}},
        "models": {"m": {"backend": "gone"}},
        "request_log": {"enabled": False},
    }
    if on:  # the control: the same probe sees the SDK once tracing is on
        config["tracing"] = {"otlp_endpoint": "http://127.0.0.1:9/v1/traces"}
    import json

    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert (imported != []) is on, imported


def test_tracing_config() -> None:
    assert parse_settings({}, {}).tracing is None
    t = parse_settings(
        {
            "tracing": {
                "otlp_endpoint": "http://c:4318/v1/traces",
                "sample_ratio": 0.25,
                "headers": {"x-token": "${TOK}"},
            }
        },
        {"TOK": "s3cret"},
    ).tracing
    assert t is not None and (t.service_name, t.sample_ratio, t.headers) == ("ollamux", 0.25, (("x-token", "s3cret"),))
    assert "s3cret" not in repr(t)
    for bad, key in (
        ({"service_name": "x"}, "tracing.otlp_endpoint"),
        ({"otlp_endpoint": "c:4318"}, "tracing.otlp_endpoint"),
        ({"otlp_endpoint": "http://c", "sample_ratio": 2}, "tracing.sample_ratio"),
        ({"otlp_endpoint": "http://c", "exporter": "x"}, "tracing.exporter"),
    ):
        with pytest.raises(ConfigError) as err:
            parse_settings({"tracing": bad}, {})
        assert err.value.key == key


def test_mask_url() -> None:
    assert mask_url("http://u:p@h:1/v1") == "http://u:***@h:1/v1"  # the user name says which account
    assert mask_url("https://h/v1") == "https://h/v1"
    assert mask_url("http://tok@[::1]:8/x") == "http://***@[::1]:8/x"
