"""Tool calls between the APIs: Ollama carries arguments as objects, OpenAI as JSON strings."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from ..errors import BadRequest

__all__ = ["arguments_to_object", "arguments_to_string", "synth_call_id"]

_ALNUM = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def synth_call_id(*parts: object) -> str:
    """A deterministic 9-character alphanumeric id: vLLM's Mistral templates accept nothing else."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()
    n = int.from_bytes(digest, "big")
    out = []
    for _ in range(9):
        n, r = divmod(n, 62)
        out.append(_ALNUM[r])
    return "".join(out)


def arguments_to_string(args: Any) -> str:
    """Object (or already-string) arguments as the compact JSON string OpenAI expects."""
    if isinstance(args, str):
        return args
    if args is None:
        return "{}"
    return orjson.dumps(args).decode()


def arguments_to_object(args: Any, *, strict: bool = False) -> Any:
    """String arguments parsed into the object Ollama clients need (pydantic rejects a string)."""
    if isinstance(args, dict):
        return args
    if args is None or args == "":
        return {}
    if isinstance(args, str):
        try:
            value = orjson.loads(args)
        except orjson.JSONDecodeError:
            if strict:
                raise BadRequest("invalid tool call arguments") from None
            # a model that wrote broken JSON: keep its text rather than lose it
            return {"arguments": args}
        return value if isinstance(value, dict) else {"value": value}
    if strict:
        raise BadRequest("invalid tool call arguments")
    return {"value": args}
