"""A stand-in for ollamux's built-in engine (`python -m ollamux.runtime.engine ...`): it takes the same
arguments, writes them and every chat request it gets to `$FAKE_ENGINE_RECORD` (one JSON line each), and
answers llama.cpp's /health and a fixed chat answer. For what no small real model can show offline: a
vision projector passed with `--mmproj`, and an image reaching the engine.

    python tests/fakes/fake_engine.py -m ollamux.runtime.engine --model M --port N [--mmproj P] ...
"""

from __future__ import annotations

import json
import os
import sys

from aiohttp import web


def main() -> None:
    args = sys.argv[1:]
    if args[:2] == ["-m", "ollamux.runtime.engine"]:
        args = args[2:]
    port = int(args[args.index("--port") + 1])
    record = os.environ["FAKE_ENGINE_RECORD"]

    def write(kind: str, data: object) -> None:
        with open(record, "a") as f:
            f.write(json.dumps({"kind": kind, "data": data}) + "\n")

    write("argv", args)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        write("chat", body)
        message = {"role": "assistant", "content": "a red square"}
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        return web.json_response(
            {
                "id": "c1",
                "object": "chat.completion",
                "created": 1,
                "model": body.get("model"),
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            }
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
