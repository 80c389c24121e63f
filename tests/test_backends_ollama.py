"""Ollama clients in front of an Ollama backend: the native API relayed as is, with model names mapped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest

from .conftest import ProxyFactory
from .fakes.ollama_upstream import DETAILS, FakeOllama

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def fake(fake_ollama: tuple[FakeOllama, str]) -> FakeOllama:
    return fake_ollama[0]


@pytest.fixture
def proxy_url(fake_ollama: tuple[FakeOllama, str], start_proxy: ProxyFactory) -> str:
    return start_proxy(
        {
            "backends": {"ol": {"type": "ollama", "url": fake_ollama[1], "discover": True}},
            "models": {
                "my-qwen": {"backend": "ol", "upstream": "qwen3:latest"},
                "midstream": {"backend": "ol"},
                "bad-request": {"backend": "ol"},
                "gone": {"backend": "ol"},
            },
        }
    )


@pytest.fixture
def client(proxy_url: str) -> Iterator[ollama.Client]:
    c = ollama.Client(host=proxy_url)
    yield c
    c._client.close()


def test_chat_streamed_names_mapped(client: ollama.Client, fake: FakeOllama) -> None:
    parts = list(client.chat(model="my-qwen", messages=HI, stream=True, options={"num_ctx": 8192, "mirostat": 1}))
    assert "".join(p.message.content or "" for p in parts) == "Hello from Ollama!"
    assert all(p.model == "my-qwen" for p in parts)  # the client's name in every line
    final = parts[-1]
    assert final.done and final.done_reason == "stop" and final.eval_count == 3 and final.prompt_eval_count == 7
    sent = fake.last("/api/chat").json
    assert sent["model"] == "qwen3:latest" and sent["options"] == {"num_ctx": 8192, "mirostat": 1}


def test_chat_not_streamed_tools_and_thinking(client: ollama.Client) -> None:
    r = client.chat(model="my-qwen", messages=HI)
    assert r.model == "my-qwen" and r.message.content == "Hello from Ollama!" and r.done
    r = client.chat(model="tools", messages=HI, tools=[{"type": "function", "function": {"name": "get_weather"}}])
    calls = r.message.tool_calls or []
    assert r.model == "tools" and calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == {"city": "Tokyo", "unit": "c"}  # objects, as the backend sent them
    parts = list(client.chat(model="think", messages=HI, think=True, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == "Let me think."


def test_request_and_stream_relayed_byte_for_byte(
    proxy_url: str, fake: FakeOllama, fake_ollama: tuple[FakeOllama, str]
) -> None:
    raw = b'{"model": "my-qwen", "messages": [{"role": "user", "content": "hi"}], "keep_alive": -1, "x_extra": 1.50}'
    r = httpx.post(proxy_url + "/api/chat", content=raw, headers={"x-request-id": "native-7"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    assert r.headers["x-request-id"] == "native-7"
    got = fake.last("/api/chat")
    assert got.body == raw.replace(b'"my-qwen"', b'"qwen3:latest"')
    sent = {k.lower(): v for k, v in got.headers.items()}
    assert sent["x-request-id"] == "native-7" and sent["accept-encoding"] == "identity"  # lines are rewritten
    direct = httpx.post(fake_ollama[1] + "/api/chat", content=got.body)
    assert r.content == direct.content.replace(b'{"model":"qwen3:latest"', b'{"model":"my-qwen"')


def test_generate_and_embeddings(client: ollama.Client, fake: FakeOllama) -> None:
    parts = list(client.generate(model="my-qwen", prompt="Once", stream=True))
    assert all(p.response is not None for p in parts)
    assert "".join(p.response or "" for p in parts) == "Once upon a time" and parts[-1].done
    assert all(p.model == "my-qwen" for p in parts)
    r = client.generate(model="my-qwen", prompt="Once", raw=True)
    assert r.response == "Once upon a time" and fake.last("/api/generate").json["raw"] is True
    e = client.embed(model="nomic:v1", input=["a", "b"])
    assert e.model == "nomic:v1" and len(e.embeddings) == 2 and e.prompt_eval_count == 4
    assert fake.last("/api/embed").json["model"] == "nomic:v1"
    assert client.embeddings(model="nomic:v1", prompt="a").embedding == [1.0, 2.0, 3.0]


def test_show_tags_ps(client: ollama.Client, fake: FakeOllama) -> None:
    show = client.show("my-qwen")
    assert show.capabilities == ["completion", "tools", "thinking"] and show.modelinfo is not None
    assert fake.last("/api/show").json == {"model": "qwen3:latest"}
    tags = {m.model: m for m in client.list().models}
    assert {"my-qwen:latest", "qwen3:latest", "tools:latest", "nomic:v1"} <= set(tags)
    qwen = tags["qwen3:latest"]
    assert qwen.size == 5_000_000_000 and qwen.digest == "ab" * 32
    assert qwen.details is not None and qwen.details.family == DETAILS["family"]
    assert qwen.details.quantization_level == "Q4_K_M"
    assert qwen.modified_at is not None and qwen.modified_at.year == 2025
    running = [m.model for m in client.ps().models]
    assert running and all(m in ("qwen3:latest", "my-qwen:latest") for m in running)  # not-ours is not listed


def test_errors_relayed(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="gone", messages=HI)
    assert info.value.status_code == 404 and info.value.error == "model 'gone' not found"
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="bad-request", messages=HI, stream=False)
    assert info.value.status_code == 400 and "temperature too hot" in info.value.error
    with pytest.raises(ollama.ResponseError, match="the model crashed"):
        list(client.chat(model="midstream", messages=HI, stream=True))
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="not-configured", messages=HI)
    assert info.value.status_code == 404


def test_backend_down_mid_request(start_proxy: ProxyFactory) -> None:
    from .servers import free_port

    url = start_proxy(
        {
            "backends": {"ol": {"type": "ollama", "url": f"http://127.0.0.1:{free_port()}"}},
            "models": {"m": {"backend": "ol"}},
        }
    )
    r = httpx.post(url + "/api/chat", json={"model": "m", "messages": HI})
    body: Any = r.json()
    assert r.status_code == 502 and "cannot be reached" in body["error"]
    assert json.loads(httpx.get(url + "/api/ps").content) == {"models": []}  # a dead backend lists nothing
