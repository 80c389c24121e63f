"""Pass-through bodies: the client's bytes, with only the model name swapped (pure, no I/O).

Re-serialising a request would reorder nothing (orjson keeps key order) but would still change bytes
(whitespace, number spellings, escapes) and cost a full encode of bodies that can hold megabytes of
base64 images, so the `"model"` value is replaced in place whenever that is unambiguous.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import orjson

__all__ = ["pair_pattern", "replace_model_in_body"]


def replace_model_in_body(raw: bytes, body: dict[str, Any], new: str) -> bytes:
    """`raw` (which parsed to `body`) with its top-level `model` set to `new`, other bytes untouched.

    In place when exactly one `"model": <old>` pair occurs (a pair spelled with unescaped quotes cannot
    hide inside a JSON string, so the only one is the top-level key); otherwise re-serialised.
    """
    old = body.get("model")
    if old == new:
        return raw
    if isinstance(old, str):
        old_json = orjson.dumps(old)
        found = pair_pattern(old_json).finditer(raw)
        first = next(found, None)
        if first is not None and next(found, None) is None:
            return raw[: first.end() - len(old_json)] + orjson.dumps(new) + raw[first.end() :]
    # absent (a default model), escaped, or duplicated: keep the meaning, lose the exact bytes
    return orjson.dumps({**body, "model": new})


@functools.lru_cache(maxsize=256)
def pair_pattern(old_json: bytes) -> re.Pattern[bytes]:
    return re.compile(rb'"model"\s*:\s*' + re.escape(old_json))
