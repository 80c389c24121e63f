"""A model's `defaults`, `strip` and `force` on every front, each with its official SDK, on both kinds of
backend: the translating fronts meet them at the pivot, the byte-exact pass-throughs re-serialised."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from .conftest import ProxyFactory, basic_config
from .fakes.ollama_upstream import FakeOllama
from .fakes.openai_upstream import FakeOpenAI
from .fakes.recording_upstream import RecordingUpstream
from .servers import LoopThread

TUNED: dict[str, Any] = {
    "defaults": {
        "options": {"temperature": 0.3, "num_predict": 64, "top_k": 7, "stop": ["END"]},
        "system": "Be terse.",
        "think": False,
    },
    "strip": ["seed"],
    "force": {"top_p": 0.5},
}
HI: list[Any] = [{"role": "user", "content": "hi"}]
SYSTEM = {"role": "system", "content": "Be terse."}


@pytest.fixture
def openai_proxy(fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory) -> str:
    config = basic_config(fake_openai[1])
    config["models"]["tuned"] = {"backend": "fake", "upstream": "fake-model", **TUNED}
    return start_proxy(config)


@pytest.fixture
def ollama_proxy(fake_ollama: tuple[FakeOllama, str], start_proxy: ProxyFactory) -> str:
    return start_proxy(
        {
            "backends": {"ol": {"type": "ollama", "url": fake_ollama[1]}},
            "models": {"tuned": {"backend": "ol", "upstream": "qwen3:latest", **TUNED}},
        }
    )


@pytest.fixture
def clients() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for c in made:
        c.close() if not isinstance(c, ollama.Client) else c._client.close()


def oai(base: str, made: list[Any]) -> openai.OpenAI:
    made.append(openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0))
    return made[-1]  # type: ignore[no-any-return]


def claude(base: str, made: list[Any]) -> anthropic.Anthropic:
    made.append(anthropic.Anthropic(base_url=base, api_key="x", max_retries=0))
    return made[-1]  # type: ignore[no-any-return]


def ollama_client(base: str, made: list[Any]) -> ollama.Client:
    made.append(ollama.Client(host=base))
    return made[-1]  # type: ignore[no-any-return]


def assert_pivot(sent: dict[str, Any], *, temperature: float = 0.9, max_tokens: int = 64) -> None:
    """What the model's params make of a request that said temperature 0.9, seed 5, top_p 0.1."""
    assert sent["model"] == "fake-model" and sent["temperature"] == temperature  # the request's own wins
    assert (sent["max_tokens"], sent["top_k"], sent["stop"]) == (max_tokens, 7, ["END"])  # defaults
    assert "seed" not in sent and sent["top_p"] == 0.5  # stripped; forced
    assert sent["messages"][0] == SYSTEM and sent["chat_template_kwargs"] == {"enable_thinking": False}


# ---------------------------------------------------------------------------- OpenAI-compatible backend
def test_ollama_front(openai_proxy: str, fake_openai: tuple[FakeOpenAI, str], clients: list[Any]) -> None:
    c = ollama_client(openai_proxy, clients)
    c.chat(model="tuned", messages=HI, options={"temperature": 0.9, "seed": 5, "top_p": 0.1})
    assert_pivot(fake_openai[0].last("/chat/completions").json)
    c.generate(model="tuned", prompt="hi", system="Mine.")
    sent = fake_openai[0].last("/chat/completions").json
    assert sent["messages"][0] == {"role": "system", "content": "Mine."} and sent["temperature"] == 0.3


def test_openai_pass_through(openai_proxy: str, fake_openai: tuple[FakeOpenAI, str], clients: list[Any]) -> None:
    c = oai(openai_proxy, clients)
    c.chat.completions.create(model="tuned", messages=HI, temperature=0.9, seed=5, top_p=0.1)
    assert_pivot(fake_openai[0].last("/chat/completions").json)
    c.completions.create(model="tuned", prompt="x", seed=5)
    sent = fake_openai[0].last("/completions").json
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (64, 0.3, 0.5) and "seed" not in sent
    assert "messages" not in sent
    # a model without any params keeps the zero-cost path: the client's own body
    c.chat.completions.create(model="fake-model", messages=HI, seed=5)
    sent = fake_openai[0].last("/chat/completions").json
    assert sent["seed"] == 5 and "top_k" not in sent and sent["messages"] == HI


def test_responses_front(openai_proxy: str, fake_openai: tuple[FakeOpenAI, str], clients: list[Any]) -> None:
    c = oai(openai_proxy, clients)
    c.responses.create(model="tuned", input="hi", temperature=0.9, top_p=0.1)
    assert_pivot(fake_openai[0].last("/chat/completions").json)
    c.responses.create(model="tuned", input="hi", instructions="Mine.", max_output_tokens=5)
    sent = fake_openai[0].last("/chat/completions").json
    assert sent["messages"][0] == {"role": "system", "content": "Mine."} and sent["max_tokens"] == 5


def test_anthropic_front(openai_proxy: str, fake_openai: tuple[FakeOpenAI, str], clients: list[Any]) -> None:
    c = claude(openai_proxy, clients)
    c.messages.create(model="tuned", max_tokens=100, messages=HI, extra_body={"temperature": 0.9, "top_p": 0.1})
    assert_pivot(fake_openai[0].last("/chat/completions").json, max_tokens=100)  # Anthropic's max_tokens wins
    c.messages.create(model="tuned", max_tokens=100, messages=HI, system="Mine.")
    sent = fake_openai[0].last("/chat/completions").json
    assert sent["messages"][0] == {"role": "system", "content": "Mine."} and sent["temperature"] == 0.3


# ------------------------------------------------------------------------------------ Ollama backend
def assert_native(sent: dict[str, Any], *, num_predict: int = 64) -> None:
    assert sent["model"] == "qwen3:latest"
    opts = sent["options"]
    assert opts["temperature"] == 0.9 and opts["num_predict"] == num_predict
    assert (opts["top_k"], opts["stop"], opts["top_p"]) == (7, ["END"], 0.5) and "seed" not in opts
    assert sent["think"] is False and sent["messages"][0] == SYSTEM


def test_ollama_pass_through(ollama_proxy: str, fake_ollama: tuple[FakeOllama, str], clients: list[Any]) -> None:
    c = ollama_client(ollama_proxy, clients)
    c.chat(model="tuned", messages=HI, options={"temperature": 0.9, "seed": 5, "top_p": 0.1})
    assert_native(fake_ollama[0].last("/api/chat").json)
    c.generate(model="tuned", prompt="hi")
    sent = fake_ollama[0].last("/api/generate").json
    assert sent["system"] == "Be terse." and sent["options"]["num_predict"] == 64 and sent["think"] is False


def test_translating_fronts_on_an_ollama_backend(
    ollama_proxy: str, fake_ollama: tuple[FakeOllama, str], clients: list[Any]
) -> None:
    oai(ollama_proxy, clients).chat.completions.create(model="tuned", messages=HI, temperature=0.9, seed=5)
    assert_native(fake_ollama[0].last("/api/chat").json)
    claude(ollama_proxy, clients).messages.create(
        model="tuned", max_tokens=100, messages=HI, extra_body={"temperature": 0.9}
    )
    assert_native(fake_ollama[0].last("/api/chat").json, num_predict=100)
    oai(ollama_proxy, clients).responses.create(model="tuned", input="hi", temperature=0.9)
    assert_native(fake_ollama[0].last("/api/chat").json)


# ------------------------------------------------------------- backends serving Messages and Responses
def test_native_messages_and_responses(loop_thread: LoopThread, start_proxy: ProxyFactory) -> None:
    fake = RecordingUpstream()
    runner, url = loop_thread.start_app(fake.app())
    try:
        proxy = start_proxy(
            {
                "backends": {"native": {"url": url + "/v1", "apis": ["responses", "messages"]}},
                "models": {"tuned": {"backend": "native", "upstream": "up", **TUNED}},
            }
        )
        body = {"model": "tuned", "max_tokens": 8, "messages": HI, "top_p": 0.1, "seed": 1}
        assert httpx.post(proxy + "/v1/messages", json=body, headers={"x-request-id": "m1"}).status_code == 200
        sent = fake.one("m1").json
        assert (sent["model"], sent["max_tokens"], sent["temperature"], sent["top_k"]) == ("up", 8, 0.3, 7)
        assert sent["stop_sequences"] == ["END"] and sent["top_p"] == 0.5 and sent["system"] == "Be terse."
        assert sent["messages"] == HI and "seed" not in sent  # stripped, though the Messages API has no seed
        body = {"model": "tuned", "input": "hi", "temperature": 0.9}
        assert httpx.post(proxy + "/v1/responses", json=body, headers={"x-request-id": "r1"}).status_code == 200
        sent = fake.one("r1").json
        assert (sent["temperature"], sent["max_output_tokens"], sent["top_p"]) == (0.9, 64, 0.5)
        assert sent["instructions"] == "Be terse." and "top_k" not in sent
    finally:
        loop_thread.stop_app(runner)
