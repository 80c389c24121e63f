"""`runtime.parallel`: how many requests a chat model serves at once, when its own runtime block does not say.

The config's value wins; else `OLLAMA_NUM_PARALLEL`, which Ollama users set for the same thing (Ollama reads
it in server/sched.go, envconfig.NumParallel); else None, ollamux's default (runtime/slots.py). As in Ollama,
0 or an empty variable means the default, and it does not apply to embedding or rerank models.
"""

from __future__ import annotations

from .node import Node
from .settings import ConfigError

__all__ = ["ENV", "parse_parallel"]

ENV = "OLLAMA_NUM_PARALLEL"


def parse_parallel(node: Node) -> int | None:
    if node.has("parallel"):
        n: int = node.opt_int("parallel", None, lo=1)
        return n
    raw = node.environ.get(ENV, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise ConfigError(ENV, f"must be a whole number of parallel requests (slots), not {raw!r}") from None
    if n < 0:
        raise ConfigError(ENV, f"must be 0 (the default) or more, not {n}")
    return n or None
