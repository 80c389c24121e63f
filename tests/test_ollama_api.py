"""The Ollama API in front of an OpenAI-compatible backend, with the official `ollama` client as oracle."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import ollama
import pytest

from .fakes.openai_upstream import FakeOpenAI

PNG_1PX = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cf"
        "c0f01f0005000201a5d3d1e00000000049454e44ae426082"
    )
).decode()


@pytest.fixture
def client(proxy: str) -> Iterator[ollama.Client]:
    c = ollama.Client(host=proxy)
    yield c
    c._client.close()


@pytest.fixture
def client_for() -> Iterator[Callable[..., ollama.Client]]:
    made: list[ollama.Client] = []

    def make(host: str, **kw: Any) -> ollama.Client:
        made.append(ollama.Client(host=host, **kw))
        return made[-1]

    yield make
    for c in made:
        c._client.close()


@pytest.fixture
def fake(fake_openai: tuple[FakeOpenAI, str]) -> FakeOpenAI:
    return fake_openai[0]


def test_banner_and_version(proxy: str) -> None:
    r = httpx.get(proxy + "/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert httpx.head(proxy + "/").status_code == 200
    v = httpx.get(proxy + "/api/version").json()["version"]
    assert [int(p) for p in v.split(".")] >= [0, 6, 4]
    assert httpx.head(proxy + "/api/version").status_code == 200


def test_chat_streamed(client: ollama.Client, fake: FakeOpenAI) -> None:
    parts = list(client.chat(model="fake-model", messages=[{"role": "user", "content": "hi"}], stream=True))
    text = "".join(p.message.content or "" for p in parts)
    assert text == "Hello from the fake!"
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    final = parts[-1]
    assert final.done_reason == "stop"
    assert final.prompt_eval_count == 11 and final.eval_count == 3
    assert final.prompt_eval_duration == 5_500_000 and final.eval_duration == 12_250_000
    assert final.total_duration and final.total_duration > 0
    for p in parts[:-1]:
        assert p.eval_count is None and p.total_duration is None  # metrics only on the final chunk
    assert all(p.model == "fake-model" for p in parts)
    sent = fake.last("/chat/completions").json
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "fake-model"


def test_chat_not_streamed_echoes_model_and_alias(client: ollama.Client, fake: FakeOpenAI) -> None:
    r = client.chat(model="LLAMA3.2:3b", messages=[{"role": "user", "content": "hi"}])
    assert r.message.content == "Hello from the fake!"
    assert r.model == "LLAMA3.2:3b"  # echoed exactly as sent
    assert r.done and r.done_reason == "stop" and r.eval_count == 3
    assert fake.last("/chat/completions").json["model"] == "fake-model"


def test_ndjson_wire_format(proxy: str) -> None:
    with httpx.stream(
        "POST", proxy + "/api/chat", json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    ) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        raw = r.read()
    lines = raw.split(b"\n")
    assert lines[-1] == b""
    for line in lines[:-1]:
        assert line and not line.startswith(b"data:")
        obj = json.loads(line)
        assert obj["created_at"].endswith("Z")
        assert b": " not in line  # compact separators


def test_chat_options_format_and_think(client: ollama.Client, fake: FakeOpenAI) -> None:
    client.chat(
        model="fake-model",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        format={"type": "object", "properties": {"a": {"type": "integer"}}},
        options={
            "num_predict": 7,
            "temperature": 0.2,
            "top_p": 0.5,
            "top_k": 20,
            "min_p": 0.1,
            "seed": 42,
            "stop": ["\n"],
            "repeat_penalty": 1.1,
            "presence_penalty": 0.3,
            "frequency_penalty": 0.4,
            "mirostat": 1,
            "num_ctx": 8192,
        },
        think=False,
    )
    sent = fake.last("/chat/completions").json
    assert sent["max_tokens"] == 7 and sent["temperature"] == 0.2 and sent["top_p"] == 0.5
    assert sent["top_k"] == 20 and sent["min_p"] == 0.1 and sent["seed"] == 42 and sent["stop"] == ["\n"]
    assert sent["repeat_penalty"] == 1.1 and sent["presence_penalty"] == 0.3 and sent["frequency_penalty"] == 0.4
    assert "mirostat" not in sent and "num_ctx" not in sent
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"]["properties"]["a"] == {"type": "integer"}
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}
    client.chat(model="fake-model", messages=[{"role": "user", "content": "hi"}], format="json")
    assert fake.last("/chat/completions").json["response_format"] == {"type": "json_object"}


def test_thinking_mapped(client: ollama.Client) -> None:
    parts = list(client.chat(model="think", messages=[{"role": "user", "content": "hi"}], stream=True, think=True))
    assert "".join(p.message.thinking or "" for p in parts) == "Let me think."
    assert "".join(p.message.content or "" for p in parts) == "Hello from the fake!"
    r = client.chat(model="think", messages=[{"role": "user", "content": "hi"}], think=True)
    assert r.message.thinking == "Let me think."


def test_tool_calls_streamed_fragments_assembled(client: ollama.Client) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    parts = list(
        client.chat(model="tools", messages=[{"role": "user", "content": "weather?"}], tools=tools, stream=True)
    )
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == {"city": "Tokyo", "unit": "c"}
    assert parts[-1].done and parts[-1].done_reason == "stop"


def test_tool_calls_not_streamed(client: ollama.Client) -> None:
    r = client.chat(model="tools", messages=[{"role": "user", "content": "weather?"}])
    assert r.message.tool_calls and r.message.tool_calls[0].function.arguments == {"city": "Tokyo", "unit": "c"}


def test_parallel_tool_calls_reusing_index(proxy: str, client: ollama.Client) -> None:
    parts = list(client.chat(model="x-tools2", messages=[{"role": "user", "content": "q"}], stream=True))
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert calls[1].function.arguments == {"tz": "CET"}


def test_tool_history_translated(client: ollama.Client, fake: FakeOpenAI) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": '{"temp": 20}'},  # Home Assistant: no id, no name
    ]
    client.chat(model="fake-model", messages=messages)
    sent = fake.last("/chat/completions").json["messages"]
    call = sent[1]["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["arguments"] == '{"city":"Paris"}'
    assert len(call["id"]) == 9 and call["id"].isalnum()
    assert sent[2] == {"role": "tool", "content": '{"temp": 20}', "tool_call_id": call["id"]}


def test_images_become_data_urls(client: ollama.Client, fake: FakeOpenAI) -> None:
    client.chat(model="fake-model", messages=[{"role": "user", "content": "what is this?", "images": [PNG_1PX]}])
    content = fake.last("/chat/completions").json["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "what is this?"}
    assert content[1]["image_url"]["url"] == f"data:image/png;base64,{PNG_1PX}"


def test_generate_streamed_and_not(client: ollama.Client, fake: FakeOpenAI) -> None:
    parts = list(client.generate(model="fake-model", prompt="hi", system="sys", stream=True))
    assert all(p.response is not None for p in parts)
    assert "".join(p.response or "" for p in parts) == "Hello from the fake!"
    assert parts[-1].done and parts[-1].eval_count == 3
    sent = fake.last("/chat/completions").json
    assert sent["messages"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    r = client.generate(model="fake-model", prompt="hi")
    assert r.response == "Hello from the fake!" and r.done_reason == "stop"


def test_generate_raw_uses_completions(client: ollama.Client, fake: FakeOpenAI) -> None:
    r = client.generate(model="fake-model", prompt="def f(", suffix="return 1", raw=True)
    assert r.response == "Once upon a time"
    sent = fake.last("/completions").json
    assert sent["prompt"] == "def f(" and sent["suffix"] == "return 1"
    parts = list(client.generate(model="length", prompt="x", raw=True, stream=True)) if False else None
    assert parts is None


def test_length_done_reason(proxy: str, client: ollama.Client) -> None:
    parts = list(client.chat(model="x-length", messages=[{"role": "user", "content": "q"}], stream=True))
    assert parts[-1].done_reason == "length"


def test_load_and_unload_do_not_call_backend(client: ollama.Client, fake: FakeOpenAI) -> None:
    before = len(fake.requests)
    r = client.chat(model="fake-model", messages=[])
    assert r.done and r.done_reason == "load"
    r2 = client.generate(model="fake-model", prompt="", keep_alive=0)
    assert r2.done and r2.done_reason == "unload"
    assert len(fake.requests) == before


def test_embed(client: ollama.Client, fake: FakeOpenAI) -> None:
    r = client.embed(model="embed-model", input="hello")
    assert len(r.embeddings) == 1
    vec = r.embeddings[0]
    assert abs(sum(x * x for x in vec) - 1.0) < 1e-9
    r2 = client.embed(model="embed-model", input=["a", "bbbb"])
    assert len(r2.embeddings) == 2 and r2.prompt_eval_count == 2
    assert fake.last("/embeddings").json["input"] == ["a", "bbbb"]
    legacy = client.embeddings(model="embed-model", prompt="hello")
    assert list(legacy.embedding) == [5.0, 1.0, 2.0, 0.0]  # legacy route: not normalised


def test_tags_show_ps(client: ollama.Client) -> None:
    tags = client.list()
    names = {m.model for m in tags.models}
    assert {"fake-model:latest", "llama3.2:latest", "tools:latest"} <= names
    assert not any(n is None or "*" in n for n in names)
    show = client.show("llama3.2")
    assert show.modelinfo is not None
    arch = show.modelinfo["general.architecture"]
    assert show.modelinfo[f"{arch}.context_length"] == 2048  # from the backend's /props
    assert show.capabilities and "completion" in show.capabilities
    assert show.details and show.details.format == "gguf"
    assert client.ps().models == []


def test_show_accepts_name_and_copilot_basename(proxy: str) -> None:
    r = httpx.post(proxy + "/api/show", json={"name": "fake-model"})
    assert r.status_code == 200 and "model_info" in r.json()
    r = httpx.post(proxy + "/api/show", json={"model": "fm:7b"}, headers={"User-Agent": "GitHubCopilotChat/1.0"})
    assert r.json()["model_info"]["general.basename"] == "fm:7b"


def test_unknown_model_is_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404 and "nope" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        list(client.chat(model="nope", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        client.show("nope")
    assert e.value.status_code == 404


def test_bad_json_and_missing_model_are_400(proxy: str) -> None:
    r = httpx.post(proxy + "/api/chat", content=b"{not json", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and "error" in r.json()
    # issue 22 row 12: an empty body is Ollama's "missing request body" (was "model is required")
    r = httpx.post(proxy + "/api/chat", content=b"")
    assert r.status_code == 400 and r.json() == {"error": "missing request body"}
    r = httpx.post(proxy + "/api/chat", json={"messages": []})
    assert r.status_code == 400 and r.json() == {"error": "model is required"}
    # issue 22 row 13: /api/embed naming no model is Ollama's 404 "model '' not found" (was 400)
    r = httpx.post(proxy + "/api/embed", json={"input": "x"})
    assert r.status_code == 404 and r.json() == {"error": "model '' not found"}
    # form-encoded Content-Type, JSON body: parsed anyway, as Ollama does
    r = httpx.post(
        proxy + "/api/chat",
        content=json.dumps({"model": "fake-model", "messages": [], "stream": False}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200 and r.json()["done_reason"] == "load"


def test_upstream_4xx_passed_through(proxy: str, client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="x-bad-request", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 400 and e.value.error == "the request is bad: temperature too hot"


def test_error_mid_stream_is_final_error_line(proxy: str, client: ollama.Client) -> None:
    got: list[Any] = []
    with pytest.raises(ollama.ResponseError) as e:
        for p in client.chat(model="x-midstream", messages=[{"role": "user", "content": "q"}], stream=True):
            got.append(p)
    assert "the model crashed" in e.value.error
    assert got and got[0].message.content == "Hello"


def test_unreachable_backend_is_502(start_proxy: Any, client_for: Any) -> None:
    from .servers import free_port

    url = start_proxy(
        {"backends": {"dead": {"url": f"http://127.0.0.1:{free_port()}/v1"}}, "models": {"m": {"backend": "dead"}}}
    )
    client = client_for(url)
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="m", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 502 and "dead" in e.value.error


def test_backend_key_replaces_client_auth(proxy: str, fake: FakeOpenAI, client_for: Any) -> None:
    client = client_for(proxy, headers={"Authorization": "Bearer client-token"})
    client.chat(model="fake-model", messages=[{"role": "user", "content": "hi"}])
    assert fake.last("/chat/completions").headers["Authorization"] == "Bearer sk-backend-secret"


def test_pull_and_unmanaged_routes(client: ollama.Client, proxy: str) -> None:
    statuses = [p.status for p in client.pull("fake-model", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert client.pull("fake-model").status == "success"
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("not-here")
    assert e.value.status_code == 404
    # copy, create, delete and blobs are served (tests/test_model_admin.py); push is not
    r = httpx.post(proxy + "/api/push", json={"model": "fake-model"})
    assert r.status_code == 501 and "does not manage model files" in r.json()["error"]
