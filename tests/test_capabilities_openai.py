"""Capability checks on the OpenAI, Responses and Anthropic fronts (issue 22, rows 9-11 and 19 beyond the
Ollama API): a model whose capabilities are known (here: configured `capabilities`) is refused what it
cannot do with Ollama's words, in the front's own error envelope, before anything reaches the backend;
a model whose capabilities are not known goes to the backend as before.

Ollama's OpenAI layer (openai/openai.go) turns an OpenAI request into an api.ChatRequest and ChatHandler
(server/routes.go) checks it (`Model.CheckCapabilities`, server/images.go): tools `<name> does not support
tools`, `reasoning_effort` (thinkFromReasoningEffort: anything but "none") `"<model>" does not support
thinking`; a suffix on /v1/completions `<name> does not support insert`. Images on a model without vision
are refused the same way (`pipeline.capabilities`). The official `openai` and `anthropic` SDKs are the
clients; the fakes are real servers that record what reached them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import openai
import pytest

from .conftest import ProxyFactory, basic_config
from .fakes.ollama_upstream import FakeOllama
from .fakes.openai_upstream import FakeOpenAI

PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
HI: list[Any] = [{"role": "user", "content": "hi"}]
TOOL: dict[str, Any] = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
IMAGE: list[Any] = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}},
        ],
    }
]
EVERYTHING = ["completion", "tools", "insert", "vision", "thinking"]


def caps_config(openai_url: str, ollama_url: str) -> dict[str, Any]:
    config = basic_config(openai_url)
    config["backends"]["ol"] = {"type": "ollama", "url": ollama_url}
    config["models"].update(
        {
            "plain": {"backend": "fake", "upstream": "fake-model", "capabilities": ["completion"]},
            "able": {"backend": "fake", "upstream": "fake-model", "capabilities": EVERYTHING},
            "oplain": {"backend": "ol", "upstream": "qwen3:latest", "capabilities": ["completion"]},
        }
    )
    return config


@pytest.fixture
def proxy(fake_openai: tuple[FakeOpenAI, str], fake_ollama: tuple[FakeOllama, str], start_proxy: ProxyFactory) -> str:
    return start_proxy(caps_config(fake_openai[1], fake_ollama[1]))


@pytest.fixture
def client(proxy: str, oai: Callable[[str], openai.OpenAI]) -> openai.OpenAI:
    return oai(proxy)


@pytest.fixture
def claude(proxy: str) -> Iterator[anthropic.Anthropic]:
    c = anthropic.Anthropic(base_url=proxy, api_key="sk-ant-client", max_retries=0, timeout=20)
    yield c
    c.close()


def _openai_error(exc: pytest.ExceptionInfo[openai.BadRequestError]) -> dict[str, Any]:
    assert exc.value.status_code == 400
    body = exc.value.response.json()
    assert isinstance(body, dict)
    return body


CHAT_REFUSALS = [
    ({"tools": [TOOL]}, HI, "plain:latest does not support tools", "tools"),
    ({"reasoning_effort": "low"}, HI, '"plain" does not support thinking', "reasoning_effort"),
    (
        {"extra_body": {"chat_template_kwargs": {"enable_thinking": True}}},
        HI,
        '"plain" does not support thinking',
        "chat_template_kwargs.enable_thinking",
    ),
    ({}, IMAGE, "plain:latest does not support vision", "messages"),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("extra", "messages", "message", "param"), CHAT_REFUSALS)
def test_chat_refused_what_the_model_cannot_do(
    client: openai.OpenAI,
    fake_openai: tuple[FakeOpenAI, str],
    extra: dict[str, Any],
    messages: list[Any],
    message: str,
    param: str,
    stream: bool,
) -> None:
    """The passed-through /v1/chat/completions (an OpenAI backend): a 400 in OpenAI's envelope, with the
    field it is about, and the backend never asked (a stream too: the check comes before the first byte)."""
    before = len(fake_openai[0].requests)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="plain", messages=messages, stream=stream, **extra)
    code = None if param == "messages" else "unsupported_parameter"
    assert _openai_error(exc) == {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }
    assert fake_openai[0].requests[before:] == []


@pytest.mark.parametrize(("extra", "messages", "message", "param"), CHAT_REFUSALS)
def test_chat_passes_where_the_model_can_or_nothing_is_known(
    client: openai.OpenAI, extra: dict[str, Any], messages: list[Any], message: str, param: str
) -> None:
    """The same requests to a model that has every capability, and to one whose capabilities are not known
    (a remote model: its backend decides), are answered as before."""
    for model in ("able", "fake-model"):
        r = client.chat.completions.create(model=model, messages=messages, **extra)
        assert r.choices[0].message.content == "Hello from the fake!"


def test_reasoning_effort_none_is_no_thinking(client: openai.OpenAI) -> None:
    """`reasoning_effort: "none"` asks for no thinking (Ollama: thinkFromReasoningEffort gives think false,
    which ChatHandler never refuses): a model without thinking serves it."""
    r = client.chat.completions.create(model="plain", messages=HI, reasoning_effort="none")
    assert r.choices[0].message.content == "Hello from the fake!"


def test_completions_suffix_needs_insert(client: openai.OpenAI, fake_openai: tuple[FakeOpenAI, str]) -> None:
    """Ollama: GenerateHandler refuses a suffix on a model without "insert"; /v1/completions with `suffix`
    is the same request. An empty suffix is none."""
    before = len(fake_openai[0].requests)
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="plain", prompt="def f(", suffix="return 1")
    assert _openai_error(exc)["error"]["message"] == "plain:latest does not support insert"
    assert _openai_error(exc)["error"]["param"] == "suffix"
    assert fake_openai[0].requests[before:] == []
    assert client.completions.create(model="able", prompt="def f(", suffix="return 1").choices[0].text
    assert client.completions.create(model="plain", prompt="def f(", suffix="").choices[0].text


def test_chat_translated_to_an_ollama_backend_is_checked_too(
    client: openai.OpenAI, fake_ollama: tuple[FakeOllama, str]
) -> None:
    """An OpenAI request for a model on an Ollama backend goes through the pivot: the pipeline's one check
    gives the same 400 before the Ollama server is asked."""
    before = len(fake_ollama[0].requests)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="oplain", messages=HI, tools=[TOOL])  # type: ignore[list-item]
    assert _openai_error(exc)["error"]["message"] == "oplain:latest does not support tools"
    assert fake_ollama[0].requests[before:] == []
    assert client.chat.completions.create(model="oplain", messages=HI).choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_responses_refused_tools(client: openai.OpenAI, fake_openai: tuple[FakeOpenAI, str], stream: bool) -> None:
    """/v1/responses shares the pivot: tools on a model without them are the same 400, in OpenAI's
    envelope, streamed or not."""
    before = len(fake_openai[0].requests)
    tool: Any = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="plain", input="hi", tools=[tool], stream=stream)
    assert _openai_error(exc)["error"]["message"] == "plain:latest does not support tools"
    assert fake_openai[0].requests[before:] == []
    assert client.responses.create(model="able", input="hi", tools=[tool]).output


ANTHROPIC_REFUSALS = [
    ({"tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]}, "plain:latest does not support tools"),
    ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, '"plain" does not support thinking'),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX}},
                        {"type": "text", "text": "what is this?"},
                    ],
                }
            ]
        },
        "plain:latest does not support vision",
    ),
]


@pytest.mark.parametrize(("extra", "message"), ANTHROPIC_REFUSALS)
def test_messages_refused_in_anthropics_envelope(
    claude: anthropic.Anthropic, fake_openai: tuple[FakeOpenAI, str], extra: dict[str, Any], message: str
) -> None:
    """/v1/messages shares the pivot: the same words, in Anthropic's error envelope; the same request to a
    model that can serve it is answered."""
    before = len(fake_openai[0].requests)
    kw: dict[str, Any] = {"max_tokens": 4096, "messages": HI, **extra}
    with pytest.raises(anthropic.BadRequestError) as exc:
        claude.messages.create(model="plain", **kw)
    assert exc.value.status_code == 400
    assert exc.value.response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
    }
    assert fake_openai[0].requests[before:] == []
    assert claude.messages.create(model="able", **kw).content
