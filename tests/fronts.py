"""What the tests of the new fronts (Responses, Messages) share: each runs against both kinds of backend,
reached through the pivot (the `pivot_backend` fixture in conftest.py), with the fake's recorder and what
its answers say."""

from __future__ import annotations

from typing import Any

from .fakes.ollama_upstream import FakeOllama
from .fakes.openai_upstream import FakeOpenAI


def ollama_config(url: str) -> dict[str, Any]:
    return {
        "backends": {"ol": {"type": "ollama", "url": url}},
        "models": {
            "fake-model": {"backend": "ol", "upstream": "qwen3:latest"},
            "tools": {"backend": "ol", "upstream": "tools:latest"},
            "think": {"backend": "ol", "upstream": "think:latest"},
            "x-midstream": {"backend": "ol", "upstream": "midstream"},  # as the OpenAI fake's wildcard names them
            "x-bad-request": {"backend": "ol", "upstream": "bad-request"},
        },
    }


class Backend:
    """One backend kind behind ollamux: its URL, the fake's recorder and what its answers say."""

    def __init__(self, kind: str, url: str, fake: FakeOpenAI | FakeOllama, text: str, usage: tuple[int, int]):
        self.kind, self.url, self.fake, self.text, self.usage = kind, url, fake, text, usage

    def last_messages(self) -> list[dict[str, Any]]:
        path = "/v1/chat/completions" if self.kind == "openai" else "/api/chat"
        body = self.fake.last(path).json
        assert isinstance(body, dict)
        messages = body["messages"]
        assert isinstance(messages, list)
        return messages
