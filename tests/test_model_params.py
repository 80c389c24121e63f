"""A model's defaults and filters: the config keys, and applying them to the pivot and to Ollama's own shape."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from ollamux.config import ConfigError, ModelDefaults, ModelParams, ModelSettings, parse_settings
from ollamux.pipeline.params import params_for
from ollamux.registry import ModelEntry, Route
from ollamux.state import AppState
from ollamux.translate.model_params import (
    MANAGED_NUM_PREDICT,
    apply_to_anthropic,
    apply_to_ollama,
    apply_to_pivot,
    apply_to_responses,
    runtime_hints,
    with_defaults_under,
)

PARAMS = ModelParams(
    defaults=ModelDefaults(
        options={"temperature": 0.3, "num_predict": 64, "top_k": 7, "stop": ["END"], "num_ctx": 8192},
        system="Be terse.",
        think=False,
        keep_alive=600.0,
    ),
    strip=frozenset({"seed"}),
    force={"top_p": 0.5},
)
HI = [{"role": "user", "content": "hi"}]


def model_params(config: dict[str, Any]) -> ModelParams:
    settings = parse_settings(
        {"backends": {"b": {"url": "http://x/v1"}}, "models": {"m": {"backend": "b", **config}}}, {}
    )
    return settings.models[0].params


def test_config_keys() -> None:
    settings = parse_settings(
        {
            "backends": {"b": {"url": "http://x/v1"}},
            "models": {
                "m": {
                    "backend": "b",
                    "defaults": {
                        "options": {"temperature": 0.7, "num_predict": "${N}", "stop": "</s>"},
                        "system": "sys",
                        "think": "low",
                        "keep_alive": "10m",
                        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                    },
                    "strip": ["seed", "tools"],
                    "force": {"top_k": 20, "think": False},
                },
                "plain": {"backend": "b", "system": "old style"},
            },
        },
        {"N": "128"},
    )
    m, plain = settings.models
    d = m.params.defaults
    assert d.options == {"temperature": 0.7, "num_predict": 128, "stop": ["</s>"]}
    assert (d.system, d.think, d.keep_alive) == ("sys", "low", 600.0)
    assert d.messages == ({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"})
    assert m.params.strip == {"seed", "tools"} and m.params.force == {"top_k": 20, "think": False}
    assert m.system == "sys" and plain.system == "old style" and plain.params.defaults.options == {}
    assert ModelSettings("x", "b").params.empty and not m.params.empty


@pytest.mark.parametrize(
    ("config", "key", "message"),
    [
        ({"defaults": {"options": {"temprature": 1}}}, "models.m.defaults.options.temprature", "not an Ollama option"),
        ({"defaults": {"options": {"num_predict": 1.5}}}, "models.m.defaults.options.num_predict", "integer"),
        ({"defaults": {"think": "lots"}}, "models.m.defaults.think", "must be true, false"),
        ({"defaults": {"keep_alive": "5 minutes"}}, "models.m.defaults.keep_alive", "invalid duration"),
        ({"defaults": {"messages": [{"role": "robot"}]}}, "models.m.defaults.messages[0].role", "must be one of"),
        ({"defaults": {"colour": 1}}, "models.m.defaults.colour", "unknown key"),
        ({"strip": ["nonsense"]}, "models.m.strip[0]", "not an Ollama option"),
        ({"force": {"format": "json"}}, "models.m.force.format", "not an Ollama option or think"),
        ({"system": "a", "defaults": {"system": "b"}}, "models.m.system", "give only one"),
    ],
)
def test_config_errors_name_the_key(config: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        model_params(config)
    assert info.value.key == key and message in info.value.message


# ----------------------------------------------------------------------------------------- the pivot
def test_pivot_defaults_fill_what_the_request_leaves_unsaid() -> None:
    pivot = {"model": "u", "messages": HI, "temperature": 0.9, "seed": 5, "top_p": 0.1, "stream": False}
    out = apply_to_pivot(pivot, "chat", PARAMS, "llama.cpp")
    assert out["temperature"] == 0.9  # the request's own
    assert (out["max_tokens"], out["top_k"], out["stop"]) == (64, 7, ["END"])  # defaults, as pivot names
    assert "seed" not in out and out["top_p"] == 0.5  # stripped; forced
    assert "num_ctx" not in out  # a runner option is no pivot parameter (runtime_hints carries it)
    assert out["chat_template_kwargs"] == {"enable_thinking": False}
    assert out["messages"] == [{"role": "system", "content": "Be terse."}, *HI]
    assert pivot["seed"] == 5 and pivot["messages"] == HI  # the front's own pivot is left as it was


def test_pivot_request_system_and_think_win() -> None:
    pivot = {
        "messages": [{"role": "developer", "content": "mine"}, *HI],
        "max_completion_tokens": 9,
        "reasoning_effort": "high",
    }
    out = apply_to_pivot(pivot, "chat", PARAMS, "openai")
    assert out["messages"] == pivot["messages"] and out["max_completion_tokens"] == 9 and "max_tokens" not in out
    assert out["reasoning_effort"] == "high" and "chat_template_kwargs" not in out
    assert "top_k" not in out  # the openai dialect refuses llama.cpp's extras, defaults included


def test_pivot_model_messages_after_the_system_message() -> None:
    params = ModelParams(
        defaults=ModelDefaults(
            system="S", messages=({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"})
        )
    )
    out = apply_to_pivot({"messages": HI}, "chat", params, "llama.cpp")
    assert [m["content"] for m in out["messages"]] == ["S", "q", "a", "hi"]
    mine = [{"role": "system", "content": "mine"}, *HI]
    assert [m["content"] for m in apply_to_pivot({"messages": mine}, "chat", params, "llama.cpp")["messages"]] == [
        "mine",
        "q",
        "a",
        "hi",
    ]


def test_pivot_force_and_strip_think_and_tokens() -> None:
    params = ModelParams(force={"think": True, "num_predict": -1}, strip=frozenset({"tools"}))
    pivot = {
        "messages": HI,
        "max_tokens": 10,
        "tools": [{"type": "function"}],
        "tool_choice": "auto",
        "chat_template_kwargs": {"enable_thinking": False, "other": 1},
    }
    out = apply_to_pivot(pivot, "chat", params, "llama.cpp")
    assert "max_tokens" not in out and "tools" not in out and "tool_choice" not in out  # -1: no limit
    assert out["chat_template_kwargs"] == {"other": 1, "enable_thinking": True}


def test_pivot_completion_gets_options_but_no_messages_and_embedding_nothing() -> None:
    out = apply_to_pivot({"prompt": "x"}, "completion", PARAMS, "llama.cpp")
    assert out["max_tokens"] == 64 and "messages" not in out and "chat_template_kwargs" not in out
    assert apply_to_pivot({"input": "x"}, "embedding", PARAMS, "llama.cpp") == {"input": "x"}
    empty = ModelParams()
    pivot = {"messages": HI}
    assert apply_to_pivot(pivot, "chat", empty, "llama.cpp") is pivot  # nothing to do: the same object


def test_runtime_hints() -> None:
    assert runtime_hints(PARAMS, None, None) == (600.0, 8192)
    assert runtime_hints(PARAMS, 5.0, 2048) == (5.0, 2048)  # the request's own
    assert runtime_hints(ModelParams(force={"num_ctx": 1024}), None, 4096) == (None, 1024)


# ------------------------------------------------------------------------------------ Ollama's shape
def test_ollama_chat_body() -> None:
    body = {"model": "m", "messages": HI, "options": {"temperature": 0.9, "seed": 5}, "think": True}
    out = apply_to_ollama(body, "chat", PARAMS)
    assert out["options"] == {
        "temperature": 0.9,
        "num_predict": 64,
        "top_k": 7,
        "stop": ["END"],
        "num_ctx": 8192,
        "top_p": 0.5,
    }
    assert out["think"] is True and out["keep_alive"] == 600.0
    assert out["messages"][0] == {"role": "system", "content": "Be terse."}


def test_ollama_generate_and_embed_bodies() -> None:
    out = apply_to_ollama({"prompt": "x"}, "generate", PARAMS)
    assert out["system"] == "Be terse." and out["think"] is False and out["options"]["num_predict"] == 64
    raw = apply_to_ollama({"prompt": "x", "raw": True}, "generate", PARAMS)
    assert "system" not in raw  # raw mode takes no system prompt, as in Ollama
    assert apply_to_ollama({"prompt": "x", "system": "mine"}, "generate", PARAMS)["system"] == "mine"
    embed = apply_to_ollama({"input": "x", "options": {"seed": 1}}, "embed", PARAMS)
    assert embed == {"input": "x", "options": {"top_p": 0.5}, "keep_alive": 600.0}


def test_models_ollamux_runs_sample_as_ollama_does() -> None:
    managed = with_defaults_under(
        ModelParams(defaults=ModelDefaults(options={"temperature": 0.2})), {"top_k": 40, "temperature": 0.8}
    )
    assert managed.defaults.options == {"top_k": 40, "temperature": 0.2}

    class Runtime:
        def manages(self, backend: str) -> bool:
            return backend.startswith("runtime:")

    state = cast(AppState, SimpleNamespace(runtime=Runtime()))
    ran = params_for(state, Route("m", ModelEntry("m:latest", "runtime:m:latest", "m:latest"), "m:latest"))
    assert ran.defaults.options == {
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.9,
        "repeat_penalty": 1.1,
        "num_predict": MANAGED_NUM_PREDICT,
    }
    proxied = params_for(state, Route("m", ModelEntry("m:latest", "fake", "m"), "m"))
    assert proxied.empty


def test_native_messages_and_responses_shapes() -> None:
    params = ModelParams(
        defaults=ModelDefaults(
            options={"temperature": 0.3, "num_predict": 64, "stop": ["END"], "repeat_penalty": 1.1},
            system="S",
            messages=({"role": "system", "content": "x"}, {"role": "user", "content": "q"}),
        ),
        strip=frozenset({"tools"}),
        force={"num_predict": -1, "top_k": 3},
    )
    body = {"max_tokens": 8, "messages": HI, "tools": [{}], "tool_choice": {"type": "auto"}}
    out = apply_to_anthropic(body, params)
    assert "max_tokens" not in out and out["top_k"] == 3 and out["temperature"] == 0.3  # -1 forced: no limit
    assert out["stop_sequences"] == ["END"] and "repeat_penalty" not in out  # only what Anthropic's API names
    assert out["system"] == "S" and out["messages"] == [{"role": "user", "content": "q"}, *HI]
    assert "tools" not in out and "tool_choice" not in out
    assert apply_to_anthropic({"messages": HI, "system": "mine"}, params)["system"] == "mine"
    out = apply_to_responses({"input": "hi", "instructions": "mine"}, params)
    assert out == {"input": "hi", "instructions": "mine", "temperature": 0.3}
