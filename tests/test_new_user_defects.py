"""Defects a new user meets by following the README, each with its repro; those still open are marked
xfail(strict=True) until fixed.
Real processes and sockets: an ollamux app over a models folder holding the real SmolLM2 file."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import ProxyFactory
from .runtime_helpers import Proxy, link_into, model_file, start_proxy
from .servers import LoopThread


@pytest.fixture
def folder_proxy(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Proxy]:
    models = tmp_path / "models"
    link_into(models, model_file())
    (models / "notes.gguf").write_text("my notes, saved with the wrong extension\n")
    proxy = start_proxy(loop_thread, {"runtime": {"models_dir": str(models), "ctx": 2048}}, tmp_path)
    yield proxy
    proxy.close()


def test_show_parameters_give_the_context_the_model_runs_with(folder_proxy: Proxy) -> None:
    """Repro: `ollamux serve` over a models folder with SmolLM2 (no config: ctx 4096), then `ollamux show
    smollm2-135m-instruct:q4_1`: Parameters say num_ctx 8192 while `ollamux ps` says CONTEXT 4096. A user
    who saves that Modelfile and creates from it runs the model at twice the context (and memory)."""
    r = folder_proxy.post("/api/show", {"model": "smollm2-135m-instruct:q4_1"})
    assert r.status_code == 200, r.text
    params = dict(line.split(None, 1) for line in r.json()["parameters"].splitlines())
    assert params["num_ctx"].strip() == "2048"


def test_a_file_that_is_not_gguf_is_not_offered_as_a_model(folder_proxy: Proxy) -> None:
    """Repro: `echo notes > ~/.ollamux/models/notes.gguf; ollamux serve`: the log warns `notes.gguf is not a
    GGUF file` (twice), yet `ollamux list` shows `notes:latest  12 B`, and `ollamux run notes` spawns an engine
    that exits with code 2 before saying the same thing."""
    names = [m["name"] for m in httpx.get(folder_proxy.url + "/api/tags", timeout=30).json()["models"]]
    assert "smollm2-135m-instruct:q4_1" in names
    assert "notes:latest" not in names


def test_engine_log_has_no_runpy_warning(tmp_path: Path) -> None:
    """Repro: `ollamux run notes` (a models-folder file that is not GGUF): the error quotes the model's log,
    whose first line is `<frozen runpy>:128: RuntimeWarning: 'ollamux.runtime.engine' found in sys.modules
    after import of package 'ollamux.runtime' ...`, noise above the one line that says what is wrong."""
    bad = tmp_path / "notes.gguf"
    bad.write_text("not a model\n")
    done = subprocess.run(
        [sys.executable, "-m", "ollamux.runtime.engine", "--model", str(bad), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "is not a GGUF file" in done.stderr
    assert "RuntimeWarning" not in done.stderr


def test_rerank_on_a_chat_model_names_the_config_key(folder_proxy: Proxy) -> None:
    """Repro: the README's rerank snippet with `model` set to a models-folder chat model: 501
    `This server does not support reranking. Start it with --reranking`."""
    r = folder_proxy.post(
        "/v1/rerank",
        {"model": "smollm2-135m-instruct:q4_1", "query": "capital of France?", "documents": ["Paris.", "Berlin."]},
        timeout=120,
    )
    assert r.status_code >= 400
    assert "rerank: true" in r.text


def test_check_refuses_a_gguf_key_naming_a_file_that_is_not_gguf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Repro: `models: {smol: {runtime: {gguf: notes.txt}}}` then `ollamux check -c FILE`: `OK`; the mistake
    shows only at the first request, as `failed to start: its process exited with code 2`."""
    from ollamux.cli import main

    bad = tmp_path / "notes.gguf"
    bad.write_text("not a model\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"models:\n  smol:\n    runtime: {{gguf: {bad}}}\n")
    assert main(["check", "-c", str(cfg)]) == 1
    assert "models.smol.runtime.gguf" in capsys.readouterr().err


def test_a_discovery_404_names_the_url_asked(
    fake_openai: tuple[object, str], start_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Repro: `ollamux serve --backend http://127.0.0.1:8080` (the server's root, /v1 left off): the log says
    `model discovery on backend 'default' failed: 404 page not found`, and nothing says which URL that was."""
    root = fake_openai[1]  # serves /v1/models; the root has no /models
    url = start_proxy({"backends": {"default": {"type": "openai", "url": root, "discover": True}}})
    with caplog.at_level("WARNING", logger="ollamux.discovery"):
        httpx.get(url + "/api/tags", timeout=30)
    failed = [r.getMessage() for r in caplog.records if "model discovery on backend 'default' failed" in r.getMessage()]
    assert failed, caplog.text
    assert f"{root}/models" in failed[-1]
