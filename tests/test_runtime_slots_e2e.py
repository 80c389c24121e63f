"""End to end with SmolLM2: concurrent clients share one model (parallel slots), and a conversation's next
turn reuses the prompt cache, through ollamux's own API as clients call it.

No timing is asserted: the concurrency test orders events (every stream's first token before any stream's
end), and the cache test reads what llama.cpp reports it evaluated (`timings.prompt_n`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest

from .runtime_helpers import Proxy, model_file, start_proxy
from .servers import LoopThread

pytestmark = pytest.mark.e2e

CTX = 1024
STORY = [{"role": "user", "content": "Tell me a long story about a dragon who learns to bake bread."}]


@pytest.fixture(scope="module")
def proxy(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    gguf = str(model_file())
    config = {
        "runtime": {"max_running": 2},
        "models": {
            "smol": {"runtime": {"gguf": gguf, "ctx": CTX, "threads": 2}},  # the default: 4 slots
            "smol-one": {"runtime": {"gguf": gguf, "ctx": CTX, "threads": 2, "parallel": 1}},
        },
    }
    p = start_proxy(loop_thread, config, tmp_path_factory.mktemp("slots-e2e"))
    yield p
    p.close()


def stream_order(proxy: Proxy, model: str, n: int, max_tokens: int) -> list[tuple[str, int]]:
    """Start `n` streamed chats at once; the order in which each one's first token, later tokens and end
    arrived."""
    events: list[tuple[str, int]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    go = threading.Barrier(n)

    def run(i: int) -> None:
        # ignore_eos: every stream runs its max_tokens, so none ends early by chance (llama.cpp's own field)
        body = {"model": model, "messages": STORY, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
        try:
            go.wait()
            first = True
            with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=body, timeout=300) as r:
                assert r.status_code == 200, r.read()
                for line in r.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    if (choices[0].get("delta") or {}).get("content"):
                        with lock:
                            events.append(("first" if first else "token", i))
                        first = False
            with lock:
                events.append(("done", i))
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    return events


def load(proxy: Proxy, model: str) -> None:
    r = proxy.post("/api/generate", {"model": model}, timeout=120)  # Ollama's empty prompt: start it
    assert r.status_code == 200, r.text


def test_four_concurrent_streams_are_served_at_once(proxy: Proxy) -> None:
    load(proxy, "smol")
    events = stream_order(proxy, "smol", 4, max_tokens=96)
    kinds = [kind for kind, _ in events if kind != "token"]
    # every one of the four had its first token before any of them was done: decoded together, not queued
    assert kinds == ["first"] * 4 + ["done"] * 4, events


def test_one_slot_queues_them_as_before(proxy: Proxy) -> None:
    load(proxy, "smol-one")
    max_tokens = 32
    events = stream_order(proxy, "smol-one", 2, max_tokens=max_tokens)
    # with `parallel: 1` the second stream waits for the first to end. The witness is how many of the first
    # stream's tokens had arrived when the second's first token did: all of them when queued, one or two when
    # decoded together. Not "done before first": llama.cpp frees the slot as it sends the last chunk, and on a
    # loaded machine the first stream's reader can still be finishing when the second's first token lands.
    firsts = [i for kind, i in events if kind == "first"]
    assert len(firsts) == 2, events
    before = events[: events.index(("first", firsts[1]))]
    earlier = sum(1 for kind, i in before if i == firsts[0] and kind in ("first", "token"))
    assert earlier >= max_tokens // 2, events
    assert [kind for kind, _ in events if kind != "token"].count("done") == 2, events


def test_the_next_turn_of_a_conversation_reuses_the_prompt_cache(proxy: Proxy) -> None:
    system = {
        "role": "system",
        "content": "You are a patient teacher of geography. Answer in two short sentences, with one fact each, "
        "and never use lists. The student is twelve years old and curious about capitals and rivers.",
    }
    turn1 = [system, {"role": "user", "content": "What is the capital of France?"}]
    body = {"model": "smol", "messages": turn1, "max_tokens": 24, "temperature": 0}
    first = proxy.post("/v1/chat/completions", body, timeout=120).json()
    reply = first["choices"][0]["message"]["content"]
    turn2 = [*turn1, {"role": "assistant", "content": reply}, {"role": "user", "content": "And of Spain?"}]
    second = proxy.post("/v1/chat/completions", {**body, "messages": turn2}, timeout=120).json()
    prompt_tokens, evaluated = second["usage"]["prompt_tokens"], second["timings"]["prompt_n"]
    # the first turn's prompt (and the reply llama.cpp generated) are cached: only the new turn is evaluated
    assert prompt_tokens > first["usage"]["prompt_tokens"] > 50
    assert evaluated < prompt_tokens - first["usage"]["prompt_tokens"] + 10, second["timings"]
    assert second["timings"]["cache_n"] >= first["usage"]["prompt_tokens"] - 1, second["timings"]


def test_slots_are_what_the_engine_runs(proxy: Proxy) -> None:
    load(proxy, "smol")
    m = proxy.manager.models["runtime:smol"]
    assert m.http is not None
    # llama.cpp's own /slots endpoint (on by default) lists the slots the running engine has
    slots = httpx.get(m.http.settings.url.removesuffix("/v1") + "/slots", timeout=10).json()
    assert len(slots) == 4 and all(s["n_ctx"] == CTX for s in slots)


def test_embed_cuts_inputs_to_one_slots_batch(proxy: Proxy) -> None:
    # a chat model with 4 slots of 1024: an input is cut to the physical batch (512), which every slot holds
    long = "the sea is blue and the sky is grey " * 120
    r = proxy.post("/api/embed", {"model": "smol", "input": [long, "hello"]}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["embeddings"]) == 2 and 500 < body["prompt_eval_count"] <= 520
    refused = proxy.post("/api/embed", {"model": "smol", "input": long, "truncate": False}, timeout=120)
    assert refused.status_code == 400 and "context length" in refused.json()["error"]
