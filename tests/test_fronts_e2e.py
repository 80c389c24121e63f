"""The Responses and Messages APIs end to end with a real model: SmolLM2-135M through the built-in engine.

Each runs both ways a model ollamux runs can serve it: natively (llama.cpp's server serves both APIs, so
the request goes through untouched; the default for GGUF models) and through the chat-completions pivot
(`runtime: {apis: []}`), with the official SDKs as the oracle.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from .runtime_helpers import Proxy, model_file, start_proxy
from .servers import LoopThread

pytestmark = pytest.mark.e2e

CTX = 1024
MODELS = ["smol-native", "smol-pivot"]  # the Responses API goes through the pivot for both (see RuntimeSpec)


@pytest.fixture(scope="module")
def proxy(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    gguf: Path = model_file()
    spec = {"gguf": str(gguf), "ctx": CTX, "ttl": 300, "threads": 2}
    config = {
        "runtime": {"max_running": 2},
        "models": {
            "smol-native": {"runtime": spec},
            "smol-pivot": {"runtime": {**spec, "apis": []}},
        },
    }
    p = start_proxy(loop_thread, config, tmp_path_factory.mktemp("fronts-e2e"))
    yield p
    p.close()


@pytest.fixture(scope="module")
def oai(proxy: Proxy) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    yield c
    c.close()


@pytest.fixture(scope="module")
def claude(proxy: Proxy) -> Iterator[anthropic.Anthropic]:
    c = anthropic.Anthropic(base_url=proxy.url, api_key="unused", max_retries=0, timeout=120)
    yield c
    c.close()


@pytest.mark.parametrize("model", MODELS)
def test_responses_text(oai: openai.OpenAI, model: str) -> None:
    r = oai.responses.create(model=model, input="Say hello.", instructions="Answer in one word.", max_output_tokens=8)
    assert r.status in ("completed", "incomplete") and r.output_text.strip()
    assert r.usage is not None and r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 8


@pytest.mark.parametrize("model", MODELS)
def test_responses_streamed(oai: openai.OpenAI, model: str) -> None:
    # capped at 8 tokens, the model is cut short: the stream ends in `response.incomplete`, as OpenAI's does
    # (the SDK's `get_final_response()` wants `response.completed`, so the events are read here)
    events = list(oai.responses.create(model=model, input="Count: one, two,", max_output_tokens=8, stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    last = events[-1]
    assert last.type in ("response.completed", "response.incomplete")
    assert deltas and "".join(deltas) == last.response.output_text


@pytest.mark.parametrize("model", MODELS)
def test_messages_text(claude: anthropic.Anthropic, model: str) -> None:
    m = claude.messages.create(
        model=model, max_tokens=8, system="Answer in one word.", messages=[{"role": "user", "content": "Say hello."}]
    )
    text = "".join(b.text for b in m.content if b.type == "text")
    assert text.strip() and m.stop_reason in ("end_turn", "max_tokens")
    assert m.usage.input_tokens > 0 and 0 < m.usage.output_tokens <= 8


@pytest.mark.parametrize("model", MODELS)
def test_messages_streamed(claude: anthropic.Anthropic, model: str) -> None:
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Count: one, two,"}]
    with claude.messages.stream(model=model, max_tokens=8, messages=messages) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and text == "".join(b.text for b in final.content if b.type == "text")


@pytest.mark.parametrize("model", MODELS)
def test_count_tokens_grows_with_the_prompt(claude: anthropic.Anthropic, model: str) -> None:
    short = claude.messages.count_tokens(model=model, messages=[{"role": "user", "content": "hi"}])
    long = claude.messages.count_tokens(model=model, messages=[{"role": "user", "content": "hello there " * 40}])
    assert 0 < short.input_tokens < long.input_tokens


def test_unknown_model_named_in_each_sdk(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    with pytest.raises(openai.NotFoundError, match="no-such"):
        oai.responses.create(model="no-such", input="hi")
    with pytest.raises(anthropic.NotFoundError, match="no-such"):
        claude.messages.create(model="no-such", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
