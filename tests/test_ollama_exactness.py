"""Issue 22, Ollama exactness: one test (or case) per row of its table, each naming the Ollama behaviour it
follows and where Ollama's Go source has it (ollama/ollama `server/routes.go`, `api/types.go`, ...).

Through real sockets: the official `ollama` client where it can say what it got, raw HTTP where the wire
itself is the point; the fakes record what reached the backend. The rows that need a real tokenizer or a
model's own capabilities run SmolLM2 through the built-in engine (marked e2e, at the end).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import orjson
import pytest

from ollamux.jsonutil import now_rfc3339, rfc3339
from ollamux.pipeline.capabilities import refusal
from ollamux.streams.pivot_collect import PivotCollector
from ollamux.translate import gen_context
from ollamux.translate.go_template import TemplateError, render_generate

from .conftest import ProxyFactory, basic_config
from .fakes.llama_tokenizer import FakeTokenizer, chatml, tokens
from .fakes.ollama_upstream import FakeOllama
from .fakes.openai_upstream import CONTENT, FakeOpenAI
from .runtime_helpers import Proxy, model_file
from .runtime_helpers import start_proxy as start_runtime_proxy
from .servers import LoopThread

HI = [{"role": "user", "content": "hi"}]
PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
JSON_CT = "application/json; charset=utf-8"
# Go's time.Time in JSON (RFC3339Nano): up to nine fraction digits, none trailing zero, none at all for 0
RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,8}[1-9])?Z$")


def exactness_config(upstream: str) -> dict[str, Any]:
    config = basic_config(upstream)
    config["models"]["plain"] = {"backend": "fake", "upstream": "fake-model", "capabilities": ["completion"]}
    return config


@pytest.fixture
def fake(fake_openai: tuple[FakeOpenAI, str]) -> FakeOpenAI:
    return fake_openai[0]


@pytest.fixture
def proxy(fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory) -> str:
    return start_proxy(exactness_config(fake_openai[1]))


@pytest.fixture
def client(proxy: str) -> Iterator[ollama.Client]:
    c = ollama.Client(host=proxy)
    yield c
    c._client.close()


# --------------------------------------------------------------------- row 1: /api/embed truncation
def test_embed_input_longer_than_the_context_is_cut_to_fit(client: ollama.Client, fake: FakeOpenAI) -> None:
    """Ollama: EmbedHandler (server/routes.go) tokenizes each input and cuts one longer than the context to
    its first tokens (`truncateInput`), `truncate` being nil (true) by default (api/types.go EmbedRequest).
    Here: llama.cpp's /tokenize and /detokenize, the context from its /props (the fake's n_ctx: 2048)."""
    long = " ".join(["word"] * 3000)
    r = client.embed(model="embed-model", input=["short", long])
    assert len(r.embeddings) == 2
    sent = fake.last("/embeddings").json["input"]
    assert sent[0] == "short"  # a short input is never tokenized
    assert sent[1] == " ".join(f"t{i}" for i in range(2048))  # the fake detokenizes its first 2048 tokens
    assert fake.last("/detokenize").json == {"tokens": list(range(2048))}


def test_embed_truncate_false_is_400(proxy: str, fake: FakeOpenAI) -> None:
    """Ollama: EmbedHandler (server/routes.go) with `truncate: false` and an input past the context:
    400 "the input length exceeds the context length" (an api.StatusError), nothing embedded."""
    before = len([c for c in fake.requests if c.path.endswith("/embeddings")])
    r = httpx.post(
        proxy + "/api/embed", json={"model": "embed-model", "input": "word " * 3000, "truncate": False}, timeout=30
    )
    assert r.status_code == 400 and r.json() == {"error": "the input length exceeds the context length"}
    assert len([c for c in fake.requests if c.path.endswith("/embeddings")]) == before
    r = httpx.post(proxy + "/api/embed", json={"model": "embed-model", "input": "a few words", "truncate": False})
    assert r.status_code == 200


def test_embed_truncate_goes_to_an_ollama_backend_as_is(
    fake_ollama: tuple[FakeOllama, str], start_proxy: ProxyFactory
) -> None:
    """Ollama: EmbedRequest.Truncate (api/types.go) is the Ollama server's own to apply (EmbedHandler,
    server/routes.go): an Ollama backend gets it untouched, through the native pass-through."""
    fake, url = fake_ollama
    proxy = start_proxy({"backends": {"ol": {"type": "ollama", "url": url}}, "models": {"nomic": {"backend": "ol"}}})
    r = httpx.post(proxy + "/api/embed", json={"model": "nomic", "input": ["a"], "truncate": False, "dimensions": 2})
    assert r.status_code == 200
    sent = fake.last("/api/embed").json
    assert sent["truncate"] is False and sent["dimensions"] == 2


# ----------------------------------------------------------------------- row 2: measured durations
def test_not_streamed_durations_are_llama_cpp_timings(client: ollama.Client, fake: FakeOpenAI) -> None:
    """Ollama: ChatHandler (server/routes.go) reports the runner's prompt and eval durations in a whole
    answer too (api/types.go Metrics). On a backend of llama.cpp's dialect its `timings` (prompt_ms,
    predicted_ms) are used, and the request stays a whole one upstream (the cheaper way)."""
    r = client.chat(model="fake-model", messages=HI)
    assert r.prompt_eval_duration == 5_500_000 and r.eval_duration == 12_250_000
    assert fake.last("/chat/completions").json["stream"] is False


def test_not_streamed_durations_measured_without_timings(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    """Ollama: eval_duration is measured, and left out when 0 (api/types.go Metrics, `omitempty`). A
    backend of the vllm or openai dialect reports no timings: a whole answer is asked for as a stream
    and gathered, time to the first token being prompt evaluation and the rest evaluation."""
    fake, url = fake_openai
    proxy = start_proxy(
        {
            "backends": {"vllm": {"url": f"{url}/v1", "dialect": "vllm"}},
            "models": {"untimed": {"backend": "vllm"}, "x-*": {"backend": "vllm"}},
        }
    )
    with ollama.Client(host=proxy) as client:
        r = client.chat(model="untimed", messages=HI)
        sent = fake.last("/chat/completions").json
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
        assert r.message.content == "".join(CONTENT) and r.done and r.done_reason == "stop"
        assert r.eval_count == 3 and r.prompt_eval_count == 11  # usage from the stream's usage event
        assert r.eval_duration and r.eval_duration >= 80_000_000  # the fake's two gaps of 0.05 s after the first
        assert r.prompt_eval_duration and r.total_duration and r.total_duration >= r.eval_duration
        assert r.load_duration is None
        g = client.generate(model="untimed", prompt="hi")
        assert g.response == "".join(CONTENT) and g.eval_duration and g.eval_duration >= 80_000_000
        t = client.chat(model="x-tools2", messages=HI)  # tool-call fragments joined, a reused index split
        assert [c.function.name for c in t.message.tool_calls or []] == ["get_weather", "get_time"]
        assert (t.message.tool_calls or [])[1].function.arguments == {"tz": "CET"}
        with pytest.raises(ollama.ResponseError) as e:  # the gathered stream's error event: nothing was sent
            client.chat(model="x-midstream", messages=HI)
        # the backend failed, not ollamux: 502, as every other backend failure before the first byte
        assert e.value.status_code == 502 and e.value.error == "the model crashed"


# ------------------------------------------------------------------------------ rows 3/4: logprobs
@pytest.mark.parametrize("route", ["/api/chat", "/api/generate"])
@pytest.mark.parametrize("top", [-1, 21])
def test_top_logprobs_out_of_range_is_400(proxy: str, route: str, top: int) -> None:
    """Ollama: GenerateHandler and ChatHandler (server/routes.go) check `top_logprobs` first thing, before
    the model: outside 0..20 it is 400 "top_logprobs must be between 0 and 20"."""
    body = {"model": "nope", "top_logprobs": top, "messages": HI, "prompt": "hi"}
    r = httpx.post(proxy + route, json=body)
    assert r.status_code == 400 and r.json() == {"error": "top_logprobs must be between 0 and 20"}


def test_logprobs_in_a_whole_answer(client: ollama.Client, fake: FakeOpenAI) -> None:
    """Ollama: `logprobs: true, top_logprobs: n` (api/types.go ChatRequest) go to llama-server as
    `logprobs: true, top_logprobs: max(n, 1)` (llm/llama_server.go); the answer carries
    `logprobs: [{token, logprob, bytes, top_logprobs}]` (api/types.go Logprob, server/logprob.go)."""
    r = client.chat(model="fake-model", messages=HI, logprobs=True, top_logprobs=2)
    sent = fake.last("/chat/completions").json
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    assert r.logprobs is not None and [lp.token for lp in r.logprobs] == CONTENT
    first = r.logprobs[0]
    assert first.logprob == -0.5
    assert first.top_logprobs is not None and [t.token for t in first.top_logprobs] == ["Hello", " maybe"]
    raw = httpx.post(
        client._client.base_url.join("/api/chat"),
        json={"model": "fake-model", "messages": HI, "stream": False, "logprobs": True, "top_logprobs": 1},
    ).json()
    # the field order of api/types.go Logprob; bytes are the token's UTF-8 bytes (server/logprob.go)
    assert list(raw) == ["model", "created_at", "message", "done", "done_reason", "logprobs", *list(raw)[6:]]
    assert raw["logprobs"][1] == {
        "token": " from the",
        "logprob": -0.5,
        "bytes": list(b" from the"),
        "top_logprobs": [{"token": " from the", "logprob": -0.5, "bytes": list(b" from the")}],
    }
    r = client.chat(model="fake-model", messages=HI, logprobs=True)  # top_logprobs 0: one asked, none shown
    assert fake.last("/chat/completions").json["top_logprobs"] == 1
    assert r.logprobs is not None and all(lp.top_logprobs is None for lp in r.logprobs)
    r = client.chat(model="fake-model", messages=HI)
    assert "logprobs" not in fake.last("/chat/completions").json and r.logprobs is None


def test_logprobs_per_streamed_chunk_and_generate(client: ollama.Client, fake: FakeOpenAI) -> None:
    """Ollama: each streamed chunk carries the log probabilities of its own tokens (ChatHandler,
    GenerateHandler in server/routes.go; `Logprobs` in api/types.go ChatResponse, GenerateResponse); a raw
    generate asks the completions endpoint (`logprobs: n`)."""
    parts = list(client.chat(model="fake-model", messages=HI, stream=True, logprobs=True, top_logprobs=3))
    texts = [p for p in parts if p.message.content]
    assert [p.logprobs[0].token for p in texts if p.logprobs] == CONTENT
    assert all(p.logprobs and len(p.logprobs[0].top_logprobs or []) == 3 for p in texts)
    assert parts[-1].done and parts[-1].logprobs is None
    r = client.generate(model="fake-model", prompt="Once", raw=True, logprobs=True, top_logprobs=1)
    assert fake.last("/completions").json["logprobs"] == 1
    assert r.logprobs is not None and [lp.token for lp in r.logprobs] == ["Once", " upon", " a time"]


# ------------------------------------------------------------------------------- row 8: template
def test_generate_template_is_rendered_and_sent_raw(client: ollama.Client, fake: FakeOpenAI) -> None:
    """Ollama: GenerateHandler (server/routes.go) renders the request's `template` in place of the model's
    (template.Parse, Template.Execute in template/template.go) with `.System` and `.Prompt`; a legacy
    template is cut after `{{ .Response }}`. The rendered text is the whole prompt: a raw completion."""
    tmpl = "{{ if .System }}<s>{{ .System }}</s>\n{{ end }}[INST] {{ .Prompt }} [/INST]{{ .Response }}</done>"
    r = client.generate(model="fake-model", prompt="Why?", system="Be brief.", template=tmpl)
    assert r.done
    assert fake.last("/completions").json["prompt"] == "<s>Be brief.</s>\n[INST] Why? [/INST]"
    tmpl = "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}\n{{- end }}\n<|assistant|>"
    client.generate(model="fake-model", prompt="hi", template=tmpl)
    assert fake.last("/completions").json["prompt"] == "<|user|>\nhi\n<|assistant|>"


@pytest.mark.parametrize(
    ("tmpl", "named"),
    [
        ("{{ with .System }}{{ . }}{{ end }}", "{{ with .System }}"),
        ("{{ .Prompt | upper }}", "{{ .Prompt | upper }}"),
        ("{{ .Tools }}", ".Tools"),
        ("{{ if .System }}x", "unexpected EOF"),
    ],
)
def test_generate_template_outside_the_subset_is_400(proxy: str, fake: FakeOpenAI, tmpl: str, named: str) -> None:
    """Ollama answers a template it cannot parse with 400 and the parser's error (GenerateHandler,
    server/routes.go). ollamux renders a subset of Go's text/template: what lies outside it is a 400 that
    names the construct, before the backend is called, rather than a prompt the model was never meant to see."""
    before = len(fake.requests)
    r = httpx.post(proxy + "/api/generate", json={"model": "fake-model", "prompt": "hi", "template": tmpl})
    assert r.status_code == 400 and named in r.json()["error"]
    assert not [c for c in fake.requests[before:] if c.path.endswith("completions")]


# ----------------------------------------------------------------------------- rows 5/6: context
@pytest.mark.parametrize("stream", [False, True])
def test_generate_context_restores_the_earlier_exchange(client: ollama.Client, fake: FakeOpenAI, stream: bool) -> None:
    """Ollama: GenerateHandler (server/routes.go) ends a non-raw generate with `context` (api/types.go
    GenerateResponse, after done_reason), and a `context` sent back puts the earlier exchange before the
    new prompt. ollamux's context holds that exchange itself (`translate.gen_context`: lossless, no state,
    good after a restart), which goes back to the backend as the chat's earlier turns."""
    answer = "".join(CONTENT)

    def final(prompt: str, context: Sequence[int] | None = None) -> ollama.GenerateResponse:
        if stream:
            return list(
                client.generate(model="fake-model", prompt=prompt, system="Be brief.", context=context, stream=True)
            )[-1]
        return client.generate(model="fake-model", prompt=prompt, system="Be brief.", context=context)

    first = final("What is 2+2?")
    assert first.done and first.context and all(0 <= i < 1 << 24 for i in first.context)
    second = final("And 3+3?", context=first.context)
    assert fake.last("/chat/completions").json["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And 3+3?"},
    ]
    assert second.context and len(second.context) > len(first.context)
    final("Once more", context=second.context)
    assert len(fake.last("/chat/completions").json["messages"]) == 6


def test_generate_context_wire_order_and_refusals(proxy: str) -> None:
    """`context` comes after `done_reason` in the final object, as in api/types.go GenerateResponse; a raw
    generate has none (Ollama: GenerateHandler skips it for raw); token ids ollamux did not make are a 400
    (it cannot turn them back into the exchange), not a silently forgotten conversation."""
    r = httpx.post(proxy + "/api/generate", json={"model": "fake-model", "prompt": "hi", "stream": False}).json()
    keys = list(r)
    assert keys[keys.index("done_reason") + 1] == "context"
    raw = httpx.post(
        proxy + "/api/generate", json={"model": "fake-model", "prompt": "hi", "stream": False, "raw": True}
    )
    assert "context" not in raw.json()
    bad = httpx.post(proxy + "/api/generate", json={"model": "fake-model", "prompt": "hi", "context": [1, 2, 3]})
    assert bad.status_code == 400 and "context" in bad.json()["error"]


# ------------------------------------------------- rows 5/6: context as the tokenizer's own token ids
@pytest.fixture(scope="module")
def tokenizer_fake(loop_thread: LoopThread) -> Iterator[tuple[FakeTokenizer, str]]:
    fake = FakeTokenizer()
    runner, url = loop_thread.start_app(fake.app())
    yield fake, url
    loop_thread.stop_app(runner)


@pytest.fixture
def ollama_at() -> Iterator[Callable[[str], ollama.Client]]:
    """`ollama.Client`s for proxies a test starts itself, closed after it."""
    made: list[ollama.Client] = []

    def make(host: str) -> ollama.Client:
        made.append(ollama.Client(host=host))
        return made[-1]

    yield make
    for c in made:
        c._client.close()


@pytest.fixture
def tok(
    tokenizer_fake: tuple[FakeTokenizer, str], start_proxy: ProxyFactory, ollama_at: Callable[[str], ollama.Client]
) -> tuple[FakeTokenizer, ollama.Client]:
    fake, url = tokenizer_fake
    return fake, ollama_at(start_proxy(exactness_config(url)))


def _paths_since(fake: FakeTokenizer, before: int) -> list[str]:
    return [c.path for c in fake.requests[before:]]


@pytest.mark.parametrize("stream", [False, True])
def test_generate_context_is_the_tokenizers_ids(tok: tuple[FakeTokenizer, ollama.Client], stream: bool) -> None:
    """Ollama: GenerateHandler (server/routes.go) sets the final object's `context` to
    `r.Tokenize(prompt + response)` (llm/llama_server.go Tokenize: llama-server's /tokenize, add_special
    off): the prompt as the model's template rendered it, and the answer. On a llama.cpp backend the prompt
    is what its /apply-template makes of the chat that was sent, asked after the answer is in (the stream's
    tokens never wait for it), and the ids are its /tokenize's."""
    fake, client = tok

    def final(**kw: Any) -> ollama.GenerateResponse:
        if stream:
            last: ollama.GenerateResponse = list(client.generate(model="fake-model", stream=True, **kw))[-1]
            return last
        whole: ollama.GenerateResponse = client.generate(model="fake-model", **kw)
        return whole

    before = len(fake.requests)
    first = final(prompt="What is 2+2?", system="Be brief.")
    assert _paths_since(fake, before) == ["/v1/chat/completions", "/apply-template", "/tokenize"]
    sent = fake.last("/chat/completions").json
    assert fake.last("/apply-template").json == sent  # the very chat the model answered
    assert "add_special" not in fake.last("/tokenize").json  # llama.cpp's default: no BOS, as Ollama's call
    rendered = chatml(sent["messages"])
    assert rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert first.context == tokens(rendered + "".join(CONTENT))


@pytest.mark.parametrize("stream", [False, True])
def test_generate_token_context_goes_before_the_prompt(tok: tuple[FakeTokenizer, ollama.Client], stream: bool) -> None:
    """Ollama: GenerateHandler (server/routes.go) with `context`: `r.Detokenize(req.Context)` is written
    before the newly rendered prompt, and that text is the model's prompt (a completion); its final
    `context` is that prompt and the new answer, tokenized. Here: /detokenize, /apply-template for the new
    chat, and a raw /v1/completions with both."""
    fake, client = tok
    first = client.generate(model="fake-model", prompt="What is 2+2?")
    earlier = bytes(first.context or []).decode()
    assert earlier.endswith("What is 2+2?<|im_end|>\n<|im_start|>assistant\n" + "".join(CONTENT))

    kw: dict[str, Any] = {"model": "fake-model", "prompt": "And 3+3?", "context": first.context}
    second = list(client.generate(stream=True, **kw))[-1] if stream else client.generate(**kw)
    assert fake.last("/detokenize").json == {"tokens": first.context}
    prompt = fake.last("/v1/completions").json["prompt"]
    assert prompt == earlier + chatml([{"role": "user", "content": "And 3+3?"}])
    assert second.context == tokens(prompt + "Once upon a time")
    if not stream:
        assert second.response == "Once upon a time"


def test_generate_old_context_on_a_tokenizer_backend(tok: tuple[FakeTokenizer, ollama.Client]) -> None:
    """A context in ollamux's own encoding (`translate.gen_context`, from a backend without a tokenizer or
    an earlier version) still restores the exchange, as chat turns; the answer's context is then the
    tokenizer's ids."""
    fake, client = tok
    old = gen_context.encode([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}])
    r = client.generate(model="fake-model", prompt="And 3+3?", context=old)
    sent = fake.last("/chat/completions").json["messages"]
    assert sent == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ]
    assert r.context == tokens(chatml(sent) + "".join(CONTENT))


def test_generate_token_context_refusals(
    tok: tuple[FakeTokenizer, ollama.Client],
    fake_openai: tuple[FakeOpenAI, str],
    start_proxy: ProxyFactory,
    ollama_at: Callable[[str], ollama.Client],
) -> None:
    """Token ids that cannot be read back are a 400 that says why, before the model runs: on a backend
    without a tokenizer (dialect openai: OpenAI's API has none), with images (a raw completion carries
    none), or in a broken ollamux encoding; never an exchange silently forgotten."""
    fake, client = tok
    before = len(fake.requests)
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="fake-model", prompt="hi", images=[PNG_1PX], context=[104, 105])
    assert err.value.status_code == 400 and "images" in err.value.error
    assert fake.requests[before:] == []
    broken = [gen_context.MAGIC, 3, 1]
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="fake-model", prompt="hi", context=broken)
    assert err.value.status_code == 400 and "context" in err.value.error

    config = exactness_config(fake_openai[1])
    config["backends"]["fake"]["dialect"] = "openai"
    plain = ollama_at(start_proxy(config))
    before = len(fake_openai[0].requests)
    with pytest.raises(ollama.ResponseError) as err:
        plain.generate(model="fake-model", prompt="hi", context=[104, 105])
    assert err.value.status_code == 400
    assert "token ids" in err.value.error and "backend 'fake' has no tokenizer" in err.value.error
    assert fake_openai[0].requests[before:] == []  # OpenAI's dialect: nothing asked, nothing generated


@pytest.mark.parametrize("stream", [False, True])
def test_generate_context_without_a_tokenizer_round_trips(
    fake_openai: tuple[FakeOpenAI, str],
    start_proxy: ProxyFactory,
    ollama_at: Callable[[str], ollama.Client],
    stream: bool,
) -> None:
    """A backend of the openai dialect has no tokenizer to ask: `context` is ollamux's lossless encoding
    (`translate.gen_context`, first int MAGIC), asked of nobody, and sending it back restores the exchange."""
    fake, url = fake_openai
    config = exactness_config(url)
    config["backends"]["fake"]["dialect"] = "openai"
    client = ollama_at(start_proxy(config))

    def final(**kw: Any) -> ollama.GenerateResponse:
        if stream:
            last: ollama.GenerateResponse = list(client.generate(model="fake-model", stream=True, **kw))[-1]
            return last
        whole: ollama.GenerateResponse = client.generate(model="fake-model", **kw)
        return whole

    before = len(fake.requests)
    first = final(prompt="What is 2+2?")
    assert first.context and first.context[0] == gen_context.MAGIC
    assert [c.path for c in fake.requests[before:]] == ["/v1/chat/completions"]
    final(prompt="And 3+3?", context=first.context)
    assert fake.last("/chat/completions").json["messages"][1:] == [
        {"role": "assistant", "content": "".join(CONTENT)},
        {"role": "user", "content": "And 3+3?"},
    ]


# ----------------------------------------------------------------------------- row 7: dimensions
@pytest.mark.parametrize(("dims", "length"), [(0, 4), (-3, 4), (2, 2), (4, 4), (10, 4)])
def test_embed_dimensions_zero_or_negative_is_the_whole_vector(client: ollama.Client, dims: int, length: int) -> None:
    """Ollama: EmbedHandler (server/routes.go) cuts a vector only when 0 < dimensions < its length
    (`req.Dimensions > 0 && req.Dimensions < len(embedding)`), renormalised; else the whole vector."""
    r = client.embed(model="embed-model", input="abc", dimensions=dims)
    vec = r.embeddings[0]
    assert len(vec) == length and abs(sum(x * x for x in vec) - 1.0) < 1e-9


# -------------------------------------------------------------------- rows 9/10/11/19: capabilities
@pytest.mark.parametrize(
    ("route", "extra", "message"),
    [
        (
            "/api/chat",
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
            "plain:latest does not support tools",
        ),
        ("/api/generate", {"suffix": "return 1"}, "plain:latest does not support insert"),
        ("/api/chat", {"think": True}, '"plain" does not support thinking'),
        ("/api/generate", {"think": "high"}, '"plain" does not support thinking'),
        ("/api/chat", {"images": [PNG_1PX]}, "plain:latest does not support vision"),
        ("/api/generate", {"images": [PNG_1PX]}, "plain:latest does not support vision"),
    ],
)
def test_capability_refusals(proxy: str, fake: FakeOpenAI, route: str, extra: dict[str, Any], message: str) -> None:
    """Ollama: ChatHandler and GenerateHandler (server/routes.go) refuse what the model cannot do with a
    400 before running it: `%q does not support thinking`; tools and suffix through
    Model.CheckCapabilities (server/images.go) as `<name> does not support tools` / `insert`. An image to
    a model without vision is refused the same way (Ollama lets the runner fail). Checked when the
    capabilities are known: here the config's `capabilities: [completion]`."""

    def calls() -> int:  # model calls only: a health probe of /models may come at any time
        return sum(c.path.endswith("completions") for c in fake.requests)

    before = calls()
    images = extra.pop("images", None)
    message_body: dict[str, Any] = {"role": "user", "content": "hi"}
    if images is not None and route == "/api/chat":
        message_body["images"] = images
    elif images is not None:
        extra["images"] = images
    body = {"model": "plain", "messages": [message_body], "prompt": "hi", "stream": False, **extra}
    r = httpx.post(proxy + route, json=body)
    assert r.status_code == 400 and r.json() == {"error": message}
    assert calls() == before  # refused before any backend call


def test_capabilities_that_are_a_guess_pass_through(client: ollama.Client, fake: FakeOpenAI) -> None:
    """Ollama checks capabilities it knows from the model's files; a remote model's (no `capabilities` in
    the config) are a guess, so the request goes to the backend, which decides."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    r = client.chat(model="tools", messages=HI, tools=tools, think=True)
    assert r.message.tool_calls and fake.last("/chat/completions").json["tools"][0]["function"]["name"] == "get_weather"


# ------------------------------------------------------------------------- rows 12/13: empty bodies
@pytest.mark.parametrize("route", ["/api/chat", "/api/generate"])
def test_empty_body_is_missing_request_body(proxy: str, route: str) -> None:
    """Ollama: ChatHandler and GenerateHandler (server/routes.go): `ShouldBindJSON` on an empty body is
    io.EOF, answered 400 "missing request body"."""
    r = httpx.post(proxy + route, content=b"")
    assert r.status_code == 400 and r.json() == {"error": "missing request body"}


def test_embed_and_pull_without_a_model(proxy: str) -> None:
    """Ollama: EmbedHandler (server/routes.go) answers `{}` with `writeModelRefParseError(..., 404,
    "model '' not found")`; PullHandler with 400 errtypes.InvalidModelNameErrMsg, "invalid model name"."""
    r = httpx.post(proxy + "/api/embed", json={})
    assert r.status_code == 404 and r.json() == {"error": "model '' not found"}
    r = httpx.post(proxy + "/api/pull", json={})
    assert r.status_code == 400 and r.json() == {"error": "invalid model name"}


# -------------------------------------------------------------------- row 14: trailing-slash redirects
def test_trailing_slash_redirects(proxy: str) -> None:
    """Ollama: Gin's RedirectTrailingSlash (its default, server/routes.go GenerateRoutes `gin.Default()`):
    a path that names a route without its trailing slash is redirected there, 301 for GET, 307 for any
    other method (so a POST is sent again with its body); the query stays."""
    r = httpx.get(proxy + "/api/tags/?x=1")
    assert r.status_code == 301 and r.headers["location"] == "/api/tags?x=1"
    r = httpx.get(proxy + "/api/tags/", follow_redirects=True)
    assert r.status_code == 200 and "models" in r.json()
    r = httpx.post(proxy + "/api/chat/", json={"model": "fake-model", "messages": HI, "stream": False})
    assert r.status_code == 307 and r.headers["location"] == "/api/chat"
    r = httpx.post(
        proxy + "/api/chat/", json={"model": "fake-model", "messages": HI, "stream": False}, follow_redirects=True
    )
    assert r.status_code == 200 and r.json()["message"]["content"] == "".join(CONTENT)
    assert httpx.post(proxy + "/api/tags/").status_code == 404  # no POST /api/tags to redirect to


def test_trailing_slash_redirect_comes_after_the_guard(fake_openai: tuple[FakeOpenAI, str], start_proxy: Any) -> None:
    """The redirect is made inside the guard: a request it refuses is refused with or without the slash
    (ollamux's choice; the redirected request is a new one, checked again)."""
    config = exactness_config(fake_openai[1])
    config["auth"] = {"keys": {"k": {"key": "sk-test-key-1234567890"}}}
    proxy = start_proxy(config)
    assert httpx.get(proxy + "/api/tags/").status_code == 401
    r = httpx.get(proxy + "/api/tags/", headers={"Authorization": "Bearer sk-test-key-1234567890"})
    assert r.status_code == 301


# ----------------------------------------------------------------------------- row 15: 404 and 405
def test_unknown_route_and_wrong_method_are_gin_text(proxy: str) -> None:
    """Ollama: Gin's NoRoute and NoMethod answers (server/routes.go `HandleMethodNotAllowed = true`):
    text/plain "404 page not found" and "405 method not allowed". ollamux keeps its Allow header."""
    r = httpx.get(proxy + "/api/nope")
    assert r.status_code == 404 and r.text == "404 page not found"
    assert r.headers["content-type"] == "text/plain"
    r = httpx.get(proxy + "/api/chat")
    assert r.status_code == 405 and r.text == "405 method not allowed"
    assert r.headers["content-type"] == "text/plain" and r.headers["allow"] == "POST"


def test_unknown_openai_route_is_json(proxy: str) -> None:
    """OpenAI clients read JSON errors: under /v1/ the same statuses come in OpenAI's envelope (ollamux's
    choice; Ollama's Gin answers text there too)."""
    r = httpx.post(proxy + "/v1/nope", json={})
    assert r.status_code == 404 and r.json()["error"]["message"] == "Invalid URL (POST /v1/nope)"
    assert r.headers["content-type"] == JSON_CT
    r = httpx.get(proxy + "/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "api_error" and r.headers["allow"] == "POST"


# ------------------------------------------------------------------------- row 16: JSON Content-Type
def test_every_json_answer_says_utf8(proxy: str) -> None:
    """Ollama: Gin's c.JSON writes `application/json; charset=utf-8`, for answers and errors alike."""
    answers = [
        httpx.get(proxy + "/api/version"),
        httpx.get(proxy + "/api/tags"),
        httpx.post(proxy + "/api/chat", json={"model": "fake-model", "messages": HI, "stream": False}),
        httpx.post(proxy + "/api/chat", json={"model": "nope", "messages": HI}),  # an error
        httpx.post(proxy + "/api/chat", content=b"[" * 200),  # the guard's refusal (too deep)
        httpx.get(proxy + "/api/tags", headers={"Host": "evil.example"}),  # the guard's Host check
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 404, 400, 403]
    assert all(a.headers["content-type"] == JSON_CT for a in answers)


# ------------------------------------------------------------------------------------------ row 20
def test_load_duration_left_out_and_created_at_in_go_format(proxy: str) -> None:
    """Ollama: api/types.go Metrics is all `omitempty` (no load_duration when nothing was loaded);
    `created_at` is a Go time.Time, marshalled as RFC3339Nano (fraction trailing zeros trimmed)."""
    r = httpx.post(proxy + "/api/chat", json={"model": "fake-model", "messages": HI, "stream": False}).json()
    assert "load_duration" not in r and r["eval_duration"] == 12_250_000
    assert RFC3339_NANO.match(r["created_at"]), r["created_at"]
    with httpx.stream("POST", proxy + "/api/generate", json={"model": "fake-model", "prompt": "hi"}) as s:
        lines = [httpx.Response(200, content=line).json() for line in s.iter_lines() if line]
    assert all(RFC3339_NANO.match(o["created_at"]) for o in lines)
    assert "load_duration" not in lines[-1]


def test_any_role_is_taken(client: ollama.Client, fake: FakeOpenAI) -> None:
    """Ollama: api.Message.Role is any string (api/types.go); the template decides what it means."""
    r = client.chat(model="fake-model", messages=[{"role": "critic", "content": "be harsh"}, *HI])
    assert r.done
    assert [m["role"] for m in fake.last("/chat/completions").json["messages"]] == ["critic", "user"]


def test_head_on_ps_is_405(proxy: str) -> None:
    """Ollama: server/routes.go GenerateRoutes registers `r.GET("/api/ps", ...)` and no HEAD (only `/`,
    /api/version, /api/tags and blobs have one): HEAD /api/ps is 405."""
    r = httpx.head(proxy + "/api/ps")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    assert httpx.head(proxy + "/api/tags").status_code == 200


def test_show_of_an_unknown_model_names_it_as_asked(proxy: str) -> None:
    """Ollama: ShowHandler (server/routes.go) answers a model it does not have with 404 `model '%s' not
    found`, `%s` being `req.Model` as the client sent it (no `:latest` added: GetModelInfo's os.IsNotExist
    case formats the request's own name). ollamux adds a few names that exist after a `;`."""
    for asked in ("nope", "nope:7b"):
        r = httpx.post(proxy + "/api/show", json={"model": asked})
        assert r.status_code == 404
        assert r.json()["error"].split(";")[0] == f"model '{asked}' not found"


def test_think_is_on_by_default_for_a_thinking_model(client: ollama.Client, fake: FakeOpenAI) -> None:
    """Ollama 0.12+: ChatHandler and GenerateHandler (server/routes.go) turn thinking on for a model whose
    capabilities include "thinking" when the request says nothing (`if req.Think == nil { req.Think =
    &api.ThinkValue{Value: true} }`); `think: false` still turns it off. Only where the capabilities are
    known (the config's `capabilities` here); a guessed model gets no `think` it did not ask for."""
    client.chat(model="think", messages=HI)
    assert fake.last("/chat/completions").json["chat_template_kwargs"] == {"enable_thinking": True}
    client.generate(model="think", prompt="hi")
    assert fake.last("/chat/completions").json["chat_template_kwargs"] == {"enable_thinking": True}
    client.chat(model="think", messages=HI, think=False)
    assert fake.last("/chat/completions").json["chat_template_kwargs"] == {"enable_thinking": False}
    client.chat(model="tools", messages=HI)  # capabilities unknown: nothing added
    assert "chat_template_kwargs" not in fake.last("/chat/completions").json


# --------------------------------------------------------------------------------------- row 18
def test_tags_details_carry_context_and_embedding_length(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    """/api/tags `details.context_length` and `details.embedding_length` when known: here from the config
    (`context_length`) and from a llama-server's /props (n_ctx), probed (the GGUF's: the e2e test); a model of
    which nothing is known has neither (issue 22 row 18; api/types.go ModelDetails has no such keys,
    clients that do not know them skip them)."""
    config = exactness_config(fake_openai[1])
    config["models"]["long"] = {"backend": "fake", "upstream": "fake-model", "context_length": 32768}
    proxy = start_proxy(config)
    httpx.post(proxy + "/api/show", json={"model": "fake-model"})  # probes the backend's /v1/models
    models = {m["name"]: m["details"] for m in httpx.get(proxy + "/api/tags").json()["models"]}
    assert models["long:latest"]["context_length"] == 32768
    assert models["fake-model:latest"]["context_length"] == 2048  # the probed /props n_ctx
    assert "context_length" not in models["tools:latest"]  # not probed yet: unknown, not Ollama's 4096
    assert all("embedding_length" not in d for d in models.values())  # /props has no n_embd


# ------------------------------------------------------------------------ the pure parts, directly
def test_collector_gathers_a_stream_split_anywhere() -> None:
    """The gathered stream (row 2) is the answer the backend would have sent whole, for any split of its
    bytes, timed by the clock at the first generated token."""
    events = [
        {"id": "c", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": "hm"}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hel"}, "logprobs": {"content": [{"token": "Hel"}]}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f"}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 4}},
    ]
    wire = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    for size in (1, 7, len(wire)):
        c = PivotCollector("chat", start_ns=0, clock=iter(range(1_000_000, 10_000_000, 1_000_000)).__next__)
        for i in range(0, len(wire), size):
            c.feed(wire[i : i + size])
        out = c.finish()
        choice = out["choices"][0]
        assert out["id"] == "c" and out["usage"] == {"prompt_tokens": 2, "completion_tokens": 4}
        assert choice["message"]["content"] == "Hello" and choice["message"]["reasoning_content"] == "hm"
        assert choice["message"]["tool_calls"] == [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ]
        assert choice["finish_reason"] == "tool_calls" and choice["logprobs"] == {"content": [{"token": "Hel"}]}
        assert out["timings"] == {"prompt_ms": 1.0, "predicted_ms": 1.0}  # first token at 1 ms, the end at 2


def test_capability_refusal_wording() -> None:
    """Ollama's words (server/routes.go, server/images.go): `%q` of the asked name for thinking and for a
    model that cannot chat or generate, the model's full name for the rest."""
    caps = {"completion"}
    hi = [{"role": "user", "content": "hi"}]
    assert (
        refusal({"think": "low"}, caps, chat=True, name="a:latest", requested='a"b')
        == '"a\\"b" does not support thinking'
    )
    assert refusal({"think": False}, caps, chat=True, name="a:latest", requested="a") is None
    assert refusal({}, {"embedding"}, chat=True, name="e:latest", requested="e") == '"e" does not support chat'
    assert refusal({}, {"embedding"}, chat=False, name="e:latest", requested="e") == '"e" does not support generate'
    assert refusal({"tools": []}, caps, chat=True, name="a:latest", requested="a") is None  # an empty list asks nothing
    assert refusal({"messages": [*hi, {"role": "user", "images": ["x"]}]}, caps, chat=True, name="a:1", requested="a")
    assert refusal({"suffix": ""}, caps, chat=False, name="a:latest", requested="a") is None


def test_go_template_subset() -> None:
    """Go text/template as Ollama uses it (template/template.go): `{{-`/`-}}` trim the white space beside
    them, `if` tests a non-empty string, `else` its other branch, `$.` reaches the top inside `range`,
    comments vanish; the legacy template stops at its first `.Response` in document order (deleteNode)."""
    assert render_generate("A  {{- .Prompt -}}  B", prompt="p") == "ApB"
    assert render_generate("{{ if .System }}S{{ else }}none{{ end }}:{{ .Prompt }}", prompt="p") == "none:p"
    assert render_generate("{{/* c */}}{{ .System }}", prompt="p", system="s") == "s"
    tmpl = "{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}[{{ $.System }}]"
    assert render_generate(tmpl, prompt="p", system="s") == "system=s;user=p;[s]"
    assert render_generate("{{ if .System }}{{ .Response }}{{ end }}after", prompt="p") == ""  # cut statically
    assert render_generate("{{ .Prompt }}{{ .Response }} tail {{ .Prompt }}", prompt="p") == "p"
    with pytest.raises(TemplateError, match="else if"):
        render_generate("{{ if .System }}{{ else if .Prompt }}{{ end }}", prompt="p")


def test_created_at_is_rfc3339_nano() -> None:
    """Go's time.Time JSON (RFC3339Nano): nanoseconds with trailing zeros trimmed, no fraction for 0."""
    assert rfc3339(1_700_000_000.0) == "2023-11-14T22:13:20Z"
    assert rfc3339(1_700_000_000.25) == "2023-11-14T22:13:20.25Z"
    assert all(RFC3339_NANO.match(now_rfc3339()) for _ in range(100))


# ------------------------------------------------------------------ with a real model (SmolLM2, e2e)
SMOL_CTX = 1024  # the engine's physical batch (512) is the embedding limit then


@pytest.fixture(scope="module")
def smol(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    gguf: Path = model_file()
    config = {"models": {"smol": {"runtime": {"gguf": str(gguf), "ctx": SMOL_CTX, "ttl": 300, "threads": 2}}}}
    p = start_runtime_proxy(loop_thread, config, tmp_path_factory.mktemp("exactness-e2e"))
    yield p
    p.close()


@pytest.mark.e2e
def test_e2e_embed_cut_to_the_engine_context(smol: Proxy) -> None:
    """Ollama: EmbedHandler (server/routes.go) with the model's own tokenizer: an input past the context is
    cut to fit (200), or with `truncate: false` refused (400 "the input length exceeds the context
    length"). SmolLM2 through llama.cpp: 600 words are 600 tokens, past its 512-token batch (without the
    cut, llama.cpp answers 500 "input is too large to process")."""
    long = "word " * 600
    r = smol.post("/api/embed", {"model": "smol", "input": [long, "hello"]}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["embeddings"]) == 2 and len(body["embeddings"][0]) == 576
    assert body["prompt_eval_count"] <= 512 + 2
    r = smol.post("/api/embed", {"model": "smol", "input": long, "truncate": False})
    assert r.status_code == 400 and r.json() == {"error": "the input length exceeds the context length"}


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("route", "extra", "message"),
    [
        (
            "/api/chat",
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
            "smol:latest does not support tools",
        ),
        ("/api/chat", {"think": True}, '"smol" does not support thinking'),
        ("/api/generate", {"suffix": "x"}, "smol:latest does not support insert"),
        ("/api/generate", {"images": [PNG_1PX]}, "smol:latest does not support vision"),
    ],
)
def test_e2e_capabilities_from_the_gguf(smol: Proxy, route: str, extra: dict[str, Any], message: str) -> None:
    """Ollama: the capabilities of a model it runs come from its GGUF (server/images.go Capabilities,
    `chatTemplateCapabilities`): SmolLM2's template has no tools and no <think>, and the engine loads no
    vision projector. Each is one 400 before the model runs (an image used to be llama.cpp's 500,
    retried three times)."""
    body = {"model": "smol", "messages": HI, "prompt": "hi", "stream": False, **extra}
    r = smol.post(route, body)
    assert r.status_code == 400 and r.json() == {"error": message}


@pytest.mark.e2e
def test_e2e_durations_and_logprobs(smol: Proxy) -> None:
    """Ollama: a whole answer has measured prompt and eval durations (api/types.go Metrics) and, when asked,
    `logprobs` per token (server/logprob.go): llama.cpp's timings and log probabilities, translated."""
    body = {
        "model": "smol",
        "messages": HI,
        "stream": False,
        "logprobs": True,
        "top_logprobs": 2,
        "options": {"num_predict": 4, "temperature": 0, "seed": 1},
    }
    r = smol.post("/api/chat", body, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["prompt_eval_duration"] > 0 and out["eval_duration"] > 0
    assert 0 < len(out["logprobs"]) <= 4
    assert all(len(lp["top_logprobs"]) == 2 and lp["logprob"] <= 0 for lp in out["logprobs"])
    assert "".join(lp["token"] for lp in out["logprobs"]) == out["message"]["content"]


@pytest.mark.e2e
def test_e2e_show_model_info_is_the_gguf_header(smol: Proxy) -> None:
    """Ollama: GetModelInfo (server/routes.go) shows a GGUF model's header as `model_info`, every key of it
    but `general.name` and `tokenizer.chat_template`, with `general.parameter_count` added and arrays longer
    than 1024 null unless `verbose` (getModelData, fs/ggml/gguf.go), and its tensors as `tensors` ({name,
    type, shape}, api/types.go Tensor). The header's own context (SmolLM2: 8192) stays in model_info; the
    context the model runs with is in `parameters` (and /api/ps)."""
    r = smol.post("/api/show", {"model": "smol"})
    assert r.status_code == 200, r.text
    body = r.json()
    info = body["model_info"]
    assert info["llama.context_length"] == 8192 and info["llama.embedding_length"] == 576
    assert "general.name" not in info and "tokenizer.chat_template" not in info
    assert info["general.parameter_count"] == 134515008 and info["general.basename"] == "smollm2"
    assert info["tokenizer.ggml.model"] == "gpt2" and info["tokenizer.ggml.tokens"] is None
    assert info["llama.attention.layer_norm_rms_epsilon"] == 1e-05  # a float32 as Go prints it
    assert info["general.languages"] == ["en"]  # a short array is shown
    assert body["tensors"][0] == {"name": "token_embd.weight", "type": "Q8_0", "shape": [576, 49152]}
    assert len(body["tensors"]) == 272
    assert f"num_ctx {SMOL_CTX}" in " ".join(body["parameters"].split())
    verbose = smol.post("/api/show", {"model": "smol", "verbose": True}).json()["model_info"]
    assert len(verbose["tokenizer.ggml.tokens"]) == 49152 and len(verbose["tokenizer.ggml.merges"]) == 48900


@pytest.mark.e2e
def test_e2e_tags_details_from_the_gguf(smol: Proxy) -> None:
    """/api/tags `details.context_length` (the context the model runs with) and `details.embedding_length`
    (the GGUF's `llama.embedding_length`) for a model ollamux runs (issue 22 row 18)."""
    r = httpx.get(smol.url + "/api/tags")
    details = {m["name"]: m["details"] for m in r.json()["models"]}["smol:latest"]
    assert details["context_length"] == SMOL_CTX and details["embedding_length"] == 576


@pytest.mark.e2e
def test_e2e_generate_context_is_the_engines_tokens(smol: Proxy) -> None:
    """Ollama: GenerateHandler (server/routes.go) answers with `context` = the model's tokenizer over the
    rendered prompt and the answer (`r.Tokenize(prompt + response)`), and a context sent back is
    detokenized before the new prompt. SmolLM2 through the built-in engine: the ids are exactly what its
    /tokenize makes of its /apply-template output and the answer, and the second prompt holds the first
    exchange."""
    client = ollama.Client(host=smol.url)
    try:
        opts = {"num_predict": 8, "temperature": 0, "seed": 1}
        first = client.generate(model="smol", prompt="What is 2+2?", options=opts)
        ctx = list(first.context or [])
        assert ctx and ctx[0] != gen_context.MAGIC
        rendered = smol.post(
            "/upstream/smol/apply-template", {"messages": [{"role": "user", "content": "What is 2+2?"}]}
        ).json()["prompt"]
        answer = str(first.response)
        engine = smol.post("/tokenize", {"model": "smol", "content": rendered + answer}).json()["tokens"]
        assert ctx == engine

        def text(ids: Sequence[int]) -> str:
            return str(smol.post("/detokenize", {"model": "smol", "tokens": list(ids)}).json()["content"])

        earlier = text(ctx)
        assert "What is 2+2?" in earlier and earlier.endswith(answer)
        second = list(client.generate(model="smol", prompt="And 3+3?", context=ctx, options=opts, stream=True))[-1]
        both = text(second.context or [])
        assert both.startswith(earlier) and "And 3+3?" in both[len(earlier) :]
        assert second.context and len(second.context) > len(ctx)
    finally:
        client._client.close()


@pytest.mark.e2e
def test_e2e_openai_front_checks_the_gguf_capabilities(smol: Proxy) -> None:
    """The OpenAI front makes the same capability checks as the Ollama API (`pipeline.capabilities`): SmolLM2's
    GGUF has no tools and no thinking, so `tools` and `reasoning_effort` are 400s in OpenAI's envelope with
    Ollama's words (its openai/openai.go maps `reasoning_effort` to `think`), before the model runs."""
    client = openai.OpenAI(base_url=smol.url + "/v1", api_key="sk-client", max_retries=0, timeout=60)
    messages: Any = HI
    tools: Any = [{"type": "function", "function": {"name": "f"}}]
    try:
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(model="smol", messages=messages, tools=tools)
        assert exc.value.response.json()["error"]["message"] == "smol:latest does not support tools"
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(model="smol", messages=messages, reasoning_effort="high")
        assert exc.value.response.json()["error"] == {
            "message": '"smol" does not support thinking',
            "type": "invalid_request_error",
            "param": "reasoning_effort",
            "code": "unsupported_parameter",
        }
    finally:
        client.close()


def test_generate_context_asks_a_server_without_apply_template_once(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, ollama_at: Callable[[str], ollama.Client]
) -> None:
    """A backend left at the default llama.cpp dialect that is no llama.cpp server (vLLM, another server)
    answers 404 to /apply-template: that generate's `context` is the lossless encoding, and the backend is
    not asked again, so later generates cost no extra round trip before their final object."""
    fake, url = fake_openai
    client = ollama_at(start_proxy(exactness_config(url)))
    before = len(fake.requests)
    first = client.generate(model="fake-model", prompt="What is 2+2?")
    assert [c.path for c in fake.requests[before:]] == ["/v1/chat/completions", "/apply-template"]
    assert first.context and first.context[0] == gen_context.MAGIC
    before = len(fake.requests)
    second = client.generate(model="fake-model", prompt="And 3+3?", context=first.context)
    assert [c.path for c in fake.requests[before:]] == ["/v1/chat/completions"]
    assert second.context and second.context[0] == gen_context.MAGIC
