"""/api/generate's `context`: the earlier exchange, handed to the client and taken back (pure).

Ollama (server/routes.go GenerateHandler, api/types.go GenerateRequest/GenerateResponse `Context []int`):
the final object of a non-raw generate carries `context`, the token ids of the prompt it rendered and of
the answer; a request that sends it back has it detokenized and put before its own rendered prompt, so
the model sees the earlier exchange (deprecated there, still used by older clients).

Where the backend has a tokenizer (llama.cpp's), the context is those token ids (`pipeline.gen_tokens`).
Where it has none, ollamux cannot make token ids, and its backend gets a non-raw generate as a chat (the
backend applies the model's template), so the earlier exchange goes back as chat messages. The `context`
is then the exchange itself, packed: `[MAGIC, n, ...]`, the messages as compressed JSON in n bytes, three
bytes to an int (every int below 2**24, as token ids are). It is lossless and needs no state: a context
still works after a restart, on any backend, and ollamux keeps nothing per conversation. `token_ids` tells
the two apart: a list whose first int is MAGIC is this encoding (and a broken one is a 400), any other list
of ints is token ids.

Messages sent back are placed first, after the new request's system message (a chat template wants the
system message first; the earlier exchange's own system message gives way to a new one).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import orjson

from ..errors import BadRequest

__all__ = ["MAGIC", "decode", "encode", "merge", "token_ids", "with_context"]

MAGIC = 0x4F4C58  # "OLX": above any tokenizer's vocabulary, so never the first of Ollama's token ids
_MAX_BYTES = 64 << 20  # what one context may unpack to


def encode(messages: Sequence[dict[str, str]]) -> list[int]:
    data = zlib.compress(orjson.dumps([[m["role"], m["content"]] for m in messages]), 6)
    padded = data + b"\0" * (-len(data) % 3)
    return [MAGIC, len(data), *(int.from_bytes(padded[i : i + 3], "big") for i in range(0, len(padded), 3))]


def token_ids(context: Any) -> list[int] | None:
    """The token ids a context holds; None for none and for one of ours (`decode` reads those); 400 for a
    value that is no list of integers."""
    if context is None or context == []:
        return None
    if not isinstance(context, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in context):
        raise BadRequest("context must be a list of integers")
    return None if context[0] == MAGIC else context


def decode(context: Any) -> list[dict[str, str]]:
    """The messages a context holds; [] for none; 400 for a list ollamux did not make."""
    if context is None or context == []:
        return []
    bad = BadRequest("context is not one ollamux returned (it holds the earlier exchange, not token ids)")
    if not isinstance(context, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in context):
        raise BadRequest("context must be a list of integers")
    if len(context) < 2 or context[0] != MAGIC or not 0 <= context[1] <= 3 * (len(context) - 2):
        raise bad
    if any(not 0 <= i < 1 << 24 for i in context[2:]):
        raise bad
    data = b"".join(i.to_bytes(3, "big") for i in context[2:])[: context[1]]
    try:
        out = zlib.decompressobj().decompress(data, _MAX_BYTES)
        pairs = orjson.loads(out)
    except (zlib.error, orjson.JSONDecodeError):
        raise bad from None
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in pairs
    ):
        raise bad
    return [{"role": r, "content": c} for r, c in pairs]


def merge(prior: Sequence[dict[str, str]], messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The new request's messages with the earlier exchange before them (see the module docstring)."""
    new_system = [m for m in messages if m.get("role") == "system"]
    rest = [m for m in messages if m.get("role") != "system"]
    old_system = [dict(m) for m in prior if m["role"] == "system"]
    turns = [dict(m) for m in prior if m["role"] != "system"]
    return [*(new_system or old_system[:1]), *turns, *rest]


def with_context(out: dict[str, Any], context: list[int]) -> dict[str, Any]:
    """`out` (a final generate object) with `context` after `done_reason`, api/types.go's field order."""
    result: dict[str, Any] = {}
    for k, v in out.items():
        result[k] = v
        if k == "done_reason":
            result["context"] = context
    if "context" not in result:
        result["context"] = context
    return result
