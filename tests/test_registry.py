"""Model names resolve as Ollama users type them."""

from __future__ import annotations

import pytest

from ollamux.config import parse_settings
from ollamux.errors import BadRequest, ModelNotFound
from ollamux.names import normalize_name
from ollamux.registry import ModelEntry, Registry


def registry(default: str | None = None) -> Registry:
    s = parse_settings(
        {
            "backends": {"b": {"url": "http://x/v1"}, "cloud": {"url": "http://y/v1"}},
            "models": {
                "Llama3.2": {"backend": "b", "upstream": "Llama-3.2-3B-Q4", "aliases": ["llama3.2:3b"]},
                "qwen:7b": {"backend": "b"},
                "gpt-*": {"backend": "cloud"},
            },
            "default_model": default,
        },
        {},
    )
    return Registry(s.models, s.default_model)


@pytest.mark.parametrize("name", ["llama3.2", "Llama3.2:latest", "LLAMA3.2", "llama3.2:3b", " llama3.2 "])
def test_forms_of_one_name(name: str) -> None:
    r = registry().resolve(name)
    assert r.upstream == "Llama-3.2-3B-Q4" and r.requested == name and r.entry.name == "Llama3.2:latest"


def test_tagged_name_needs_its_tag() -> None:
    reg = registry()
    assert reg.resolve("qwen:7b").upstream == "qwen:7b"
    with pytest.raises(ModelNotFound, match="'qwen' not found"):
        reg.resolve("qwen")


def test_wildcard_passes_the_asked_name_upstream() -> None:
    reg = registry()
    assert reg.resolve("gpt-4o").upstream == "gpt-4o"
    assert reg.resolve("gpt-4o:latest").upstream == "gpt-4o"  # Open WebUI appends :latest
    assert reg.resolve("gpt-4o").backend == "cloud"
    assert all("*" not in e.name for e in reg.entries())


def test_default_model_and_missing_model() -> None:
    with pytest.raises(BadRequest, match="model is required"):
        registry().resolve("")
    assert registry(default="qwen:7b").resolve(None).upstream == "qwen:7b"


def test_discovered_sources_and_config_priority() -> None:
    reg = registry()
    reg.set_source(
        "backend:b",
        [
            ModelEntry("smol:latest", "b", "SmolLM2.gguf", "discovered"),
            ModelEntry("llama3.2:latest", "b", "other", "discovered"),
        ],
    )
    assert reg.resolve("smol").upstream == "SmolLM2.gguf"
    assert reg.resolve("llama3.2").upstream == "Llama-3.2-3B-Q4"  # config wins
    names = sorted(e.name for e in reg.entries())
    assert names == ["Llama3.2:latest", "qwen:7b", "smol:latest"]
    reg.set_source("backend:b", [])
    with pytest.raises(ModelNotFound):
        reg.resolve("smol")


def test_normalize_keeps_registry_port() -> None:
    assert normalize_name("localhost:5000/ns/model") == "localhost:5000/ns/model:latest"
    assert normalize_name("ns/Model:Q4") == "ns/model:q4"
