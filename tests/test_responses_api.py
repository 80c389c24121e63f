"""OpenAI's Responses API with the official `openai` SDK as oracle, in front of both kinds of backend.

Both backends are reached through the chat-completions pivot: an OpenAI-compatible fake (the pivot
itself) and an Ollama fake (the pivot, then Ollama's native API). Stored responses, continued with
`previous_response_id`, retrieved and deleted, live in the request log's SQLite file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.responses import FunctionToolParam

from .fronts import Backend

WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": False,
}


def test_text(pivot_backend: Backend, oai: Callable[[str], openai.OpenAI]) -> None:
    r = oai(pivot_backend.url).responses.create(model="fake-model", input="hi", instructions="Be brief.")
    assert r.status == "completed" and r.output_text == pivot_backend.text
    assert r.model == "fake-model" and r.id.startswith("resp_")
    assert r.usage is not None and (r.usage.input_tokens, r.usage.output_tokens) == pivot_backend.usage
    messages = pivot_backend.last_messages()
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[-1]["role"] == "user" and "hi" in json.dumps(messages[-1])


def test_streamed_text(pivot_backend: Backend, oai: Callable[[str], openai.OpenAI]) -> None:
    with oai(pivot_backend.url).responses.stream(model="fake-model", input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == pivot_backend.text and final.output_text == pivot_backend.text
    assert final.usage is not None and final.usage.output_tokens == pivot_backend.usage[1]


def test_streamed_events_in_order(pivot_backend: Backend, oai: Callable[[str], openai.OpenAI]) -> None:
    events = list(oai(pivot_backend.url).responses.create(model="fake-model", input="hi", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == sorted(e.sequence_number for e in events)
    done = [e for e in events if e.type == "response.output_item.done"]
    assert done and done[-1].item.type == "message"  # where Codex reads its final text
    assert done[-1].item.content[0].type == "output_text" and done[-1].item.content[0].text == pivot_backend.text


def test_parameters_reach_the_backend(pivot_backend: Backend, oai: Callable[[str], openai.OpenAI]) -> None:
    oai(pivot_backend.url).responses.create(
        model="fake-model", input="hi", temperature=0.25, top_p=0.5, max_output_tokens=42
    )
    body = pivot_backend.fake.last().json
    if pivot_backend.kind == "openai":
        assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.25, 0.5, 42)
    else:
        opts = body["options"]
        assert (opts["temperature"], opts["top_p"], opts["num_predict"]) == (0.25, 0.5, 42)


def test_tool_call_and_result_round_trip(pivot_backend: Backend, oai: Callable[[str], openai.OpenAI]) -> None:
    c = oai(pivot_backend.url)
    r = c.responses.create(model="tools", input="weather in Tokyo?", tools=[WEATHER])
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments)["city"] == "Tokyo"
    sent = pivot_backend.fake.last().json
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
    # the result goes back as the SDK documents it: the call item, then its output
    c.responses.create(
        model="fake-model",
        input=[
            {"role": "user", "content": "weather in Tokyo?"},
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": "get_weather",
                "arguments": calls[0].arguments,
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"},
        ],
        tools=[WEATHER],
    )
    messages = pivot_backend.last_messages()
    assert messages[-2]["role"] == "assistant" and messages[-2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert messages[-1]["role"] == "tool" and messages[-1]["content"] == "sunny, 21 C"


def test_tool_call_streamed(pivot_backend: Backend, oai: Callable[[str], openai.OpenAI]) -> None:
    with oai(pivot_backend.url).responses.stream(model="tools", input="weather?", tools=[WEATHER]) as stream:
        arg_deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    calls = [o for o in final.output if o.type == "function_call"]
    assert len(calls) == 1 and json.loads(calls[0].arguments) == {"city": "Tokyo", "unit": "c"}
    assert json.loads("".join(arg_deltas)) == {"city": "Tokyo", "unit": "c"}


def test_reasoning(pivot_backend: Backend, oai: Callable[[str], openai.OpenAI]) -> None:
    r = oai(pivot_backend.url).responses.create(model="think", input="why?", reasoning={"effort": "high"})
    kinds = [o.type for o in r.output]
    assert kinds[0] == "reasoning" and "message" in kinds
    body = pivot_backend.fake.last().json
    if pivot_backend.kind == "ollama":
        assert body["think"] == "high"
    else:
        assert body["reasoning_effort"] == "high"


def test_stored_continued_retrieved_deleted(pivot_backend: Backend, oai: Callable[[str], openai.OpenAI]) -> None:
    c = oai(pivot_backend.url)
    first = c.responses.create(model="fake-model", input="My name is Ada.", instructions="Be brief.")
    second = c.responses.create(model="fake-model", input="What is my name?", previous_response_id=first.id)
    messages = pivot_backend.last_messages()
    # the earlier exchange goes before the new input; its instructions do not carry over (as at OpenAI)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert "Ada" in json.dumps(messages[0]) and pivot_backend.text in json.dumps(messages[1])
    got = c.responses.retrieve(second.id)
    assert got.id == second.id and got.output_text == pivot_backend.text
    c.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError, match=first.id):
        c.responses.create(model="fake-model", input="again", previous_response_id=first.id)


def test_store_false_is_not_kept(pivot_backend: Backend, oai: Callable[[str], openai.OpenAI]) -> None:
    c = oai(pivot_backend.url)
    r = c.responses.create(model="fake-model", input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)


def test_unknown_model_is_not_found(pivot_backend: Backend, oai: Callable[[str], openai.OpenAI]) -> None:
    with pytest.raises(openai.NotFoundError, match="no-such-model"):
        oai(pivot_backend.url).responses.create(model="no-such-model", input="hi")


def test_bad_json_is_a_400_in_openai_envelope(pivot_backend: Backend) -> None:
    r = httpx.post(
        pivot_backend.url + "/v1/responses", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert isinstance(r.json()["error"]["message"], str) and r.json()["error"]["type"] == "invalid_request_error"


def test_backend_error_keeps_its_status(pivot_backend: Backend, oai: Callable[[str], openai.OpenAI]) -> None:
    with pytest.raises(openai.BadRequestError, match="temperature too hot"):
        oai(pivot_backend.url).responses.create(model="x-bad-request", input="hi")


def test_error_mid_stream_raises_in_the_sdk(pivot_backend: Backend, oai: Callable[[str], openai.OpenAI]) -> None:
    with pytest.raises(openai.APIError, match="crashed"):
        with oai(pivot_backend.url).responses.stream(model="x-midstream", input="hi") as stream:
            for _ in stream:
                pass


def test_unknown_fields_and_tool_types_are_tolerated(pivot_backend: Backend) -> None:
    body = {
        "model": "fake-model",
        "input": [{"role": "developer", "content": "be terse"}, {"role": "user", "content": "hi"}],
        "tools": [WEATHER, {"type": "web_search"}, {"type": "namespace", "name": "ns", "tools": []}],
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "abc",
        "some_future_field": {"x": 1},
    }
    r = httpx.post(pivot_backend.url + "/v1/responses", json=body, timeout=20)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"


def test_real_codex_body_reaches_the_backend(pivot_backend: Backend) -> None:
    """The body Codex 0.171 really sent (tests/data): developer items become one leading system message,
    the namespace's functions are offered beside the top-level ones, web_search is dropped."""
    body = json.loads((Path(__file__).parent / "data" / "codex_request.json").read_text())
    body["model"] = "fake-model"
    r = httpx.post(pivot_backend.url + "/v1/responses", json=body, timeout=20)
    assert r.status_code == 200, r.text
    assert "response.completed" in r.text
    messages = pivot_backend.last_messages()
    assert [m["role"] for m in messages] == ["system", "user", "user"]
    if pivot_backend.kind == "openai":
        names = [t["function"]["name"] for t in pivot_backend.fake.last().json["tools"]]
        nested = [t["name"] for t in body["tools"] if t["type"] == "namespace" for t in t["tools"]]
        assert set(nested) <= set(names) and "web_search" not in names
