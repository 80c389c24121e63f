"""The built-in engine: `python -m ollamux.runtime.engine --model FILE --port N` serves one GGUF model.

It wraps `xllamacpp.Server` (llama.cpp's own HTTP server, prebuilt) and runs in its own process, started
by the manager, never inside ollamux: a crash or an out-of-memory kill of a model cannot take ollamux down,
and stopping the process gives its memory back. It serves the OpenAI API (chat, completions, embeddings;
with --rerank, /v1/rerank instead of embeddings), llama.cpp's own routes (/infill, /tokenize, ...) and
/health until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .engine_options import OptionError

__all__ = ["EMBED_BATCH", "build_params", "main"]

# llama.cpp's physical batch (n_ubatch, its own default): an input to embed must fit in one, so it is also
# the longest input /api/embed sends (pipeline/embed_fit.py cuts longer ones, as Ollama does)
EMBED_BATCH = 512


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ollamux.runtime.engine", description=__doc__)
    p.add_argument("--model", "-m", required=True, help="the GGUF file")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--ctx", "-c", type=int, default=4096, help="context length (tokens, all slots together)")
    p.add_argument("--threads", "-t", type=int, default=None, help="CPU threads (default: llama.cpp's choice)")
    p.add_argument(
        "--parallel",
        "-np",
        type=int,
        default=1,
        help="requests served at once (slots); more than 1: one unified KV cache, --ctx / N positions per slot",
    )
    p.add_argument("--alias", default=None, help="the model name /v1/models reports")
    p.add_argument(
        "--rerank",
        action="store_true",
        help="serve /v1/rerank (llama.cpp's --reranking): rank pooling; embeddings are not usable then",
    )
    p.add_argument("--mmproj", default=None, help="the vision projector GGUF loaded with the model")
    p.add_argument(
        "--options",
        default="{}",
        help="llama.cpp server options as a JSON object of CommonParams attributes (runtime/engine_options.py)",
    )
    return p


def build_params(args: argparse.Namespace) -> Any:
    import xllamacpp

    from .engine_options import apply_options
    from .gguf_meta import read_gguf

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.ctx
    params.n_parallel = args.parallel
    if args.parallel > 1 and hasattr(params, "kv_unified_per_slot"):
        # One KV cache for all slots, as `llama-server -np auto` runs, each slot capped at its share so that
        # N requests of that length always fit together (runtime/slots.py has why). A binding without the
        # cap keeps llama.cpp's split cache, which gives each slot exactly its share. The engine option
        # `kv_unified: false` splits it too.
        params.kv_unified = True
        params.kv_unified_per_slot = max(args.ctx // args.parallel, 1)
    params.n_ubatch = EMBED_BATCH
    if args.threads:
        params.cpuparams.n_threads = args.threads
        params.cpuparams_batch.n_threads = args.threads
    if args.alias:
        params.model_alias = {args.alias}  # a set in this binding: a bare string became its letters
    # One process serves chat and embeddings. llama.cpp refuses OpenAI embeddings from a model whose
    # GGUF names no pooling type ("Pooling type 'none' is not OAI compatible"), so chat models get mean
    # pooling, as `llama-server --embeddings --pooling mean` would; embedding models keep their own.
    params.embedding = True
    info = read_gguf(Path(args.model))  # read in every mode: a file that is no GGUF fails here, clearly
    if args.rerank:
        # llama.cpp's `--reranking` is exactly this pair (the binding has no flag of its own): /v1/rerank
        # answers only with rank pooling, which scores each query and document pair from the pooled output
        # (through the model's classification head when its GGUF has one); chat still works
        params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_RANK
    elif info.pooling_type is None:
        params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    if args.mmproj:
        params.mmproj.path = args.mmproj
    # last: the model's own options win over the defaults above (config load refused the ones ollamux owns)
    apply_options(params, json.loads(args.options))
    return params


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import xllamacpp
    except ImportError:
        print("ollamux engine: xllamacpp is not installed: pip install 'ollamux[llama]'", file=sys.stderr)
        return 2
    try:
        params = build_params(args)
    except OptionError as exc:
        print(f"ollamux engine: bad option {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"ollamux engine: cannot read {args.model}: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server = xllamacpp.Server(params)  # loads the model, then serves from its own threads
    except Exception as exc:  # llama.cpp reports a bad file or a busy port this way
        print(f"ollamux engine: llama.cpp could not start: {exc}", file=sys.stderr)
        return 1
    print(f"ollamux engine: serving {args.model} on {server.listening_address}", file=sys.stderr, flush=True)
    while not stop.wait(3600):
        pass
    del server  # its destructor stops the HTTP threads and frees the model
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
