"""How one managed model's server is launched: its command line, its health URL, the backend its requests go
through once it is ready, and the error a start that failed reads as. Pure: the supervisor does the I/O."""

from __future__ import annotations

from dataclasses import replace

from ..backends.http import Clients, HTTPBackend
from ..backends.openai import OpenAIBackend
from ..config import BackendSettings, RuntimeSpec, Timeouts
from ..errors import BackendError
from . import engine_options
from .model import ManagedModel

__all__ = ["RETRY_AFTER", "ModelStartError", "argv", "backend_for", "health_url"]

RETRY_AFTER = "5"  # what a 503 of the runtime (no slot, shutting down, a start called off) tells the client


class ModelStartError(BackendError):
    """The model's process exited while starting; the message carries the last lines it printed."""

    status = 500


def argv(m: ManagedModel, port: int, ctx: int, *, python: str, slots: int) -> list[str]:
    """The command that serves `m` on `port`: its own `cmd:` with ${PORT}, ${CTX}, ${HOST} and ${MODEL} filled
    in, or the built-in engine run by `python` with `slots` slots of `ctx` positions each."""
    spec = m.spec
    if spec.cmd is not None:
        subs = {"${PORT}": str(port), "${CTX}": str(ctx), "${HOST}": "127.0.0.1", "${MODEL}": m.name}

        def fill(arg: str) -> str:
            for k, v in subs.items():
                arg = arg.replace(k, v)
            return arg

        return [fill(a) for a in spec.cmd]
    assert spec.gguf is not None
    # `ctx` is what one request gets (Ollama's num_ctx, which it multiplies by OLLAMA_NUM_PARALLEL the
    # same way): the engine is given ctx for every slot, and caps each slot at its share (slots.py)
    out = [
        python,
        "-m",
        "ollamux.runtime.engine",
        "--model",
        str(spec.gguf),
        "--port",
        str(port),
        "--ctx",
        str(ctx * slots),
        "--parallel",
        str(slots),
        "--alias",
        m.name,
    ]
    if spec.threads:
        out += ["--threads", str(spec.threads)]
    if m.mmproj is not None:
        out += ["--mmproj", str(m.mmproj)]
    if spec.options:
        out += ["--options", engine_options.dumps(dict(spec.options))]
    if spec.rerank:
        out.append("--rerank")  # a `cmd:` model sets its own server's flag (llama-server --reranking)
    return out


def health_url(spec: RuntimeSpec, port: int) -> str:
    """What answers 200 once the model is in: llama.cpp's /health, or a `cmd:` model's own `health`."""
    health = spec.health if spec.cmd is not None else "/health"
    return health if health.startswith("http") else f"http://127.0.0.1:{port}/{health.lstrip('/')}"


def backend_for(name: str, port: int, spec: RuntimeSpec, client: Clients) -> HTTPBackend:
    """The OpenAI-compatible backend a running model is called through: the one place that names its class."""
    return OpenAIBackend(_backend_settings(name, port, spec), client)


def _backend_settings(name: str, port: int, spec: RuntimeSpec) -> BackendSettings:
    # generation on a CPU can take minutes: no total limit; a dead child fails the connect at once
    timeouts = replace(Timeouts(), total=None, connect=5.0)
    return BackendSettings(
        name=name, type="openai", urls=(f"http://127.0.0.1:{port}/v1",), timeouts=timeouts, native_apis=spec.apis
    )
