"""Vision on a model ollamux runs: a projector beside the model's GGUF is passed to the engine
(`--mmproj`), the model's capabilities say `vision`, and an image sent through the Ollama and OpenAI APIs
reaches the engine. No small vision GGUF ships offline, so the engine is `tests/fakes/fake_engine.py`,
started by the manager exactly as it starts the real one (the same arguments, from the interpreter it
was given); the model file is the real SmolLM2, so its header is read as any model's is."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from ollamux import create_app
from ollamux.config import parse_settings
from ollamux.state import STATE

from .runtime_helpers import link_into, model_file
from .servers import LoopThread

FAKE_ENGINE = Path(__file__).parent / "fakes" / "fake_engine.py"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).decode()


@pytest.fixture
def served(loop_thread: LoopThread, tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    folder = tmp_path / "models" / "smol-vision"
    gguf = link_into(folder, model_file(), "smol.gguf")
    projector = folder / "mmproj-smol-f16.gguf"
    projector.write_bytes(b"GGUF projector stand-in")
    record = tmp_path / "engine.jsonl"
    python = tmp_path / "python"  # the interpreter the manager starts the engine with
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_ENGINE}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    config = {
        "request_log": {"path": str(tmp_path / "requests.sqlite")},
        "runtime": {"log_dir": str(tmp_path / "logs")},
        "models": {"vis": {"runtime": {"gguf": str(gguf), "ctx": 512, "env": {"FAKE_ENGINE_RECORD": str(record)}}}},
    }
    app = create_app(parse_settings(config, dict(os.environ)))
    runner, url = loop_thread.start_app(app)
    runtime = app[STATE].runtime
    assert runtime is not None
    runtime.python = str(python)
    yield url, record, projector
    loop_thread.stop_app(runner)


def records(path: Path, kind: str) -> list[Any]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [r["data"] for r in map(json.loads, lines) if r["kind"] == kind]


def test_projector_beside_the_model_is_loaded_and_images_reach_the_engine(served: tuple[str, Path, Path]) -> None:
    url, record, projector = served
    with ollama.Client(host=url, timeout=60) as client:
        assert "vision" in (client.show("vis").capabilities or [])
        r = client.chat(model="vis", messages=[{"role": "user", "content": "what is this?", "images": [PNG]}])
    assert r.message.content == "a red square"
    argv = records(record, "argv")[0]
    assert argv[argv.index("--mmproj") + 1] == str(projector)
    sent = records(record, "chat")[-1]["messages"][-1]["content"]
    images = [p["image_url"]["url"] for p in sent if p.get("type") == "image_url"]
    assert images == [f"data:image/png;base64,{PNG}"]
    # the OpenAI API's image part reaches it as it was sent
    part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    body = {"model": "vis", "messages": [{"role": "user", "content": [{"type": "text", "text": "and this?"}, part]}]}
    assert httpx.post(url + "/v1/chat/completions", json=body, timeout=60).status_code == 200
    assert records(record, "chat")[-1]["messages"][-1]["content"][1] == part
