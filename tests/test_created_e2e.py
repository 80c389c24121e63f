"""A model created from an uploaded GGUF blob runs on the built-in engine, with its parameters, with SmolLM2."""

from __future__ import annotations

from pathlib import Path

import ollama
import pytest

from .runtime_helpers import model_file, start_proxy
from .servers import LoopThread

pytestmark = pytest.mark.e2e


def test_created_from_a_blob_is_served_by_the_engine(loop_thread: LoopThread, tmp_path: Path) -> None:
    proxy = start_proxy(loop_thread, {"runtime": {"ctx": 512}}, tmp_path)  # no models folder: blobs in the home
    client = ollama.Client(host=proxy.url, timeout=120)
    try:
        digest = client.create_blob(model_file())  # ~100 MB: more than any JSON body may be, streamed to disk
        client.create(
            model="smol",
            files={"smol.gguf": digest},
            system="You are a storyteller.",
            parameters={"num_predict": 4, "temperature": 0},
        )
        assert "smol:latest" in {m.model for m in client.list().models}
        r = client.chat(model="smol", messages=[{"role": "user", "content": "Tell me a long story about the sea."}])
        # A long answer asked for, greedy: only the created model's num_predict can stop it at 4 tokens (a short
        # "Hello." prompt could end with "stop" first, and did on one CI run).
        assert r.message.content and r.eval_count == 4
        assert r.done_reason == "length"
        assert [m.name for m in client.ps().models] == ["smol:latest"]
        client.delete("smol")
        assert client.ps().models == [] and "smol:latest" not in {m.model for m in client.list().models}
    finally:
        client._client.close()
        proxy.close()
