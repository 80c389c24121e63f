"""How many requests one managed model serves at once (llama.cpp's slots), and the context that takes.

Four slots by default for a chat model, as `llama-server -np auto` picks (tools/server/server.cpp: "n_parallel
is set to auto, using n_parallel = 4 and kv_unified = true"), so four clients asking one model are decoded
together (continuous batching) instead of queuing behind each other. The context arithmetic is Ollama's
(server/sched.go: `-c num_ctx * numParallel`): every slot is guaranteed the model's `ctx`, so the engine gets
`ctx * slots` positions and the KV cache, what `memory.estimate` counts, grows with the slots. The engine
(engine.py) makes that one unified cache of `ctx * slots` cells with each slot capped at `ctx`
(`kv_unified_per_slot`), rather than the whole pool per slot as `-np auto` does: with a shared pool and no cap,
one long request can take the cells the others need, and llama.cpp then ends every running request with
"Context size has been exceeded". A pool sized for `ctx` alone (no growth with the slots) would break
Ollama's promise that a request gets its `num_ctx`.

Embedding and rerank models get one slot, as in Ollama (sched.go: "Embedding models should always be loaded
with parallel=1"): an input must fit in one physical batch (engine.EMBED_BATCH, what /api/embed cuts inputs
to), so slots cannot batch full-length inputs together, and a request's several inputs are one task list
llama.cpp already runs back to back. A `cmd:` model runs its own server: its `parallel` (default 1) is only
what the memory estimate counts.
"""

from __future__ import annotations

from ..config import RuntimeSpec

__all__ = ["DEFAULT_SLOTS", "slots_for"]

DEFAULT_SLOTS = 4


def slots_for(spec: RuntimeSpec, default: int | None, *, embedding_only: bool) -> int:
    """The slots a model runs with: its own `runtime.parallel`, else `default` (`runtime.parallel`, or
    OLLAMA_NUM_PARALLEL) for a chat model on the built-in engine, else DEFAULT_SLOTS; 1 for the rest."""
    if spec.parallel is not None:
        return spec.parallel
    if spec.cmd is not None or spec.rerank or embedding_only:
        return 1
    return default or DEFAULT_SLOTS
