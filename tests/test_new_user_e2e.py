"""As a new user would: llama.cpp's server running a real model, `ollamux serve --backend URL` in front,
and the official `ollama` client listing, showing and chatting with the model. Real processes throughout."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import ollama
import pytest

from .runtime_helpers import model_file
from .servers import free_port

pytestmark = pytest.mark.e2e


def _wait(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} did not come up at {url}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("newuser")
    engine_port, proxy_port = free_port(), free_port()
    # llama.cpp's own server (prebuilt in xllamacpp), as a user would run llama-server
    engine = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ollamux.runtime.engine",
            "--model",
            str(model_file()),
            "--port",
            str(engine_port),
            "--ctx",
            "2048",
            "--alias",
            "SmolLM2-135M-Instruct",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait(f"http://127.0.0.1:{engine_port}/health", engine, "the engine")  # "in front of a running llama-server"
    env = {**os.environ, "HOME": str(tmp)}  # no config anywhere: only --backend
    env.pop("OLLAMUX_CONFIG", None)
    proxy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ollamux",
            "serve",
            "--backend",
            f"http://127.0.0.1:{engine_port}/v1",
            "--port",
            str(proxy_port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        _wait(f"http://127.0.0.1:{proxy_port}/api/version", proxy, "ollamux")
        yield f"http://127.0.0.1:{proxy_port}"
    finally:
        for p in (proxy, engine):
            p.terminate()
        for p in (proxy, engine):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_list_show_chat(served: str) -> None:
    client = ollama.Client(host=served)
    try:
        names = [m.model for m in client.list().models]
        assert names == ["SmolLM2-135M-Instruct:latest"]
        show = client.show("smollm2-135m-instruct")
        assert show.modelinfo is not None
        arch = show.modelinfo["general.architecture"]
        assert show.modelinfo[f"{arch}.context_length"] == 2048  # llama-server's /props
        assert show.modelinfo["general.parameter_count"] == 134515008  # llama-server's /models meta
        assert show.capabilities and "completion" in show.capabilities
        parts = list(
            client.chat(
                model="SmolLM2-135M-Instruct",
                stream=True,
                options={"num_predict": 8},
                messages=[{"role": "user", "content": "Say hello."}],
            )
        )
        assert "".join(p.message.content or "" for p in parts).strip()
        final = parts[-1]
        assert final.done and final.eval_count is not None and 0 < final.eval_count <= 8
        assert final.prompt_eval_count and final.prompt_eval_count > 0
        r = client.chat(
            model="smollm2-135m-instruct:latest",
            options={"num_predict": 4},
            messages=[{"role": "user", "content": "Count: 1, 2,"}],
        )
        assert r.done_reason in ("length", "stop") and r.eval_count is not None and r.eval_count <= 4
    finally:
        client._client.close()
