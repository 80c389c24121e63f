"""How much memory a running model holds: what `runtime.memory_budget` counts and /api/ps reports as `size`.

    resident ~ file size + KV cache + OVERHEAD

- the file: llama.cpp mmaps the weights and touches every page of them while it runs, so they end up
  resident (as page cache charged to the process: /proc/<pid>/status RssFile);
- the KV cache: K and V for every layer and every position of the context of all slots together,
  `2 * block_count * ctx_total * n_embd_gqa * bytes per element`, where n_embd_gqa is
  `attention.key_length` (else embedding_length / head_count) * head_count_kv, from the GGUF header;
  the element is f16 (2 bytes) unless the model's engine options set `cache_type_k`/`cache_type_v`
  (q8_0 ~ 1.0625 bytes: blocks of 32 values in 34 bytes). ctx_total is ctx * slots, as the manager
  starts the engine (one unified cache of that many cells, or a split one: the same bytes; slots.py);
- OVERHEAD: compute buffers, the tokenizer, the Python interpreter the engine runs in, llama.cpp's own heap.

Calibration (2026-12-01, this CPU build of xllamacpp): SmolLM2-135M-Instruct Q4_1 (98,362,432 bytes; 30
layers, 3 KV heads of 64, so 23,040 bytes of f16 KV cache per position), `--parallel 1`, VmRSS of the
engine from /proc/<pid>/status after one short chat:

    ctx  512: 198,416 kB  (RssFile 122,436 kB, RssAnon 75,980 kB); file + KV = 105.1 MiB, rest 88.7 MiB
    ctx 4096: 278,832 kB  (RssFile 122,324 kB, RssAnon 156,508 kB); file + KV = 183.8 MiB, rest 88.5 MiB

    ctx 512 x 4 slots (one unified cache of 2,048 cells, 512 a slot): 234,292 kB (RssFile 122,552 kB,
    RssAnon 111,740 kB) after two chats; file + KV = 138.8 MiB, rest 90.0 MiB

The step between the first two (78.5 MiB measured, 78.75 MiB predicted for 3,584 positions) confirms the KV term;
the constant rest, ~89 MiB here, is the overhead. Compute buffers grow with the model's width and vocabulary
(a 7B model's are a few hundred MiB at llama.cpp's default batch), so OVERHEAD is set above the measurement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["OVERHEAD", "KVShape", "bytes_per_element", "estimate", "kv_cache_bytes", "kv_shape"]

MiB = 1024 * 1024
OVERHEAD = 192 * MiB  # ~89 MiB measured for SmolLM2 (the docstring), with room for wider models

# bytes per cached value of the ggml types llama.cpp accepts for its KV cache (quantized: a block's bytes
# over its 32 values)
_ELEMENT_BYTES = {
    "F32": 4.0,
    "F16": 2.0,
    "BF16": 2.0,
    "Q8_0": 34 / 32,
    "Q5_1": 24 / 32,
    "Q5_0": 22 / 32,
    "Q4_1": 20 / 32,
    "Q4_0": 18 / 32,
    "IQ4_NL": 18 / 32,
}


@dataclass(frozen=True)
class KVShape:
    """What the KV cache's size depends on, per position: layers and the K and V widths (all KV heads)."""

    n_layer: int
    n_embd_k: int
    n_embd_v: int


def kv_shape(kv: Mapping[str, Any], arch: str) -> KVShape | None:
    """The KV cache's shape from a GGUF header's keys; None when the header lacks what it takes."""

    def num(key: str) -> int | None:
        v = kv.get(f"{arch}.{key}")
        if isinstance(v, list):  # per-layer head counts (some hybrid models): the widest layer bounds it
            v = max((x for x in v if isinstance(x, int)), default=None)
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None

    layers, embd, heads = num("block_count"), num("embedding_length"), num("attention.head_count")
    if layers is None or embd is None or heads is None:
        return None
    heads_kv = num("attention.head_count_kv") or heads  # no key: no grouped-query attention
    k_len = num("attention.key_length") or embd // heads
    v_len = num("attention.value_length") or embd // heads
    return KVShape(n_layer=layers, n_embd_k=k_len * heads_kv, n_embd_v=v_len * heads_kv)


def bytes_per_element(cache_type: object) -> float:
    """Bytes per cached value for an engine option's cache type ("GGML_TYPE_Q8_0", "q8_0"); f16 by default."""
    if not isinstance(cache_type, str):
        return 2.0
    name = cache_type.strip().upper().removeprefix("GGML_TYPE_")
    return _ELEMENT_BYTES.get(name, 2.0)


def kv_cache_bytes(shape: KVShape, ctx_total: int, options: Mapping[str, object] | None = None) -> int:
    """The KV cache of `ctx_total` positions (every slot's context together)."""
    opts = options or {}
    k = shape.n_embd_k * bytes_per_element(opts.get("cache_type_k"))
    v = shape.n_embd_v * bytes_per_element(opts.get("cache_type_v"))
    return int(shape.n_layer * ctx_total * (k + v))


def estimate(file_size: int, shape: KVShape | None, ctx_total: int, options: Mapping[str, object] | None = None) -> int:
    """The resident memory of a model running with `ctx_total` positions (the module's docstring has the sum).

    Without a known shape (a `cmd:` model naming no GGUF file, a header that could not be read) only the file
    and the overhead are counted.
    """
    kv = kv_cache_bytes(shape, ctx_total, options) if shape is not None else 0
    return max(0, file_size) + kv + OVERHEAD
