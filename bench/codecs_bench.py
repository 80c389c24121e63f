"""Micro-benchmark of the stream decoders: one big event, and the per-token hot path.

    .venv/bin/python bench/codecs_bench.py                      # this tree's decoders, 10/100/200 MB
    .venv/bin/python bench/codecs_bench.py --sizes 10,100       # fewer sizes
    .venv/bin/python bench/codecs_bench.py --codecs OLD/codecs.py --passthrough OLD/rewrite.py

Each big-event row feeds one event (an SSE `data:` event, an NDJSON line) of the given size in 64 KiB reads,
as an upstream's bytes arrive, and prints the wall time and the peak of traced memory. The `tokens` rows time
the hot path: a 50-event token stream in one read, per stream. `--codecs`/`--passthrough` load the modules
from files instead (e.g. `git show HEAD:src/ollamux/streams/codecs.py > OLD/codecs.py`), to compare with an
earlier version; a file with relative imports cannot be loaded that way, so this tree's modules are the
default. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

READ = 64 * 1024
MB = 1000 * 1000
UNLIMITED = 1 << 40


def _load(path: str | None, name: str) -> ModuleType:
    if path is None:
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(f"bench_{Path(path).stem}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _make(cls: Any, *args: Any) -> Any:
    # the events here are larger than the default limit on purpose; an earlier version may have no limit
    try:
        return cls(*args, UNLIMITED)
    except TypeError:
        return cls(*args)


def _reads(data: bytes) -> list[bytes]:
    return [data[i : i + READ] for i in range(0, len(data), READ)]


def _sse_feed(codecs: Any, reads: list[bytes]) -> int:
    dec = _make(codecs.SSEDecoder)
    n = 0
    for r in reads:
        n += sum(len(e.data) for e in dec.feed(r))
    return n + sum(len(e.data) for e in dec.flush())


def _sse_payloads(codecs: Any, reads: list[bytes]) -> int:
    dec = _make(codecs.SSEDecoder)
    n = 0
    for r in reads:
        n += sum(map(len, dec.payloads(r)))
    return n + sum(len(e.data) for e in dec.flush())


def _ndjson(codecs: Any, reads: list[bytes]) -> int:
    dec = _make(codecs.NDJSONDecoder)
    n = 0
    for r in reads:
        n += sum(map(len, dec.feed(r)))
    return n + sum(map(len, dec.flush()))


def _rewriter(passthrough: Any, reads: list[bytes]) -> int:
    rw = _make(passthrough.ModelLineRewriter, "up:latest", "mine")
    n = 0
    for r in reads:
        n += len(rw.feed(r))
    return n + len(rw.flush())


def _big_sse(size: int) -> bytes:
    return b"data: " + b"x" * size + b"\n\n"


def _big_line(size: int) -> bytes:
    return b'{"model":"up:latest","response":"' + b"x" * size + b'"}\n'


def _time(fn: Callable[[], int], expect: int) -> tuple[float, float]:
    gc.collect()
    tracemalloc.start()
    t0 = time.perf_counter()
    got = fn()
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # the rewriter's output is the line renamed, hence the small difference
    assert abs(got - expect) < 64, (got, expect)
    return elapsed, peak / MB


def _tokens(codecs: Any) -> float:
    stream = b"".join(b'data: {"choices":[{"delta":{"content":"t%d"}}]}\n\n' % i for i in range(50))
    runs = 20_000
    t0 = time.perf_counter()
    for _ in range(runs):
        dec = codecs.SSEDecoder()
        dec.payloads(stream)
        dec.flush()
    return (time.perf_counter() - t0) / runs * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,100,200", help="event sizes in MB (10^6 bytes), comma-separated")
    ap.add_argument("--codecs", help="a codecs.py file to load instead of ollamux.streams.codecs")
    ap.add_argument("--passthrough", help="a file with ModelLineRewriter to load instead of ollamux.streams.rewrite")
    ap.add_argument("--only", default="sse-feed,sse-payloads,ndjson,rewriter,tokens", help="which rows")
    args = ap.parse_args()
    codecs = _load(args.codecs, "ollamux.streams.codecs")
    passthrough = _load(args.passthrough, "ollamux.streams.rewrite")
    only = set(args.only.split(","))
    print("| decoder | event MB | seconds | peak traced MB |\n|---|---:|---:|---:|", flush=True)
    for mb in (int(s) for s in args.sizes.split(",")):
        size = mb * MB
        rows: list[tuple[str, Callable[[], int], int]] = []
        if only & {"sse-feed", "sse-payloads"}:
            sse = _reads(_big_sse(size))
            if "sse-feed" in only:
                rows.append(("SSEDecoder.feed", partial(_sse_feed, codecs, sse), size))
            if "sse-payloads" in only:
                rows.append(("SSEDecoder.payloads", partial(_sse_payloads, codecs, sse), size))
        if only & {"ndjson", "rewriter"}:
            nd = _reads(_big_line(size))
            line = len(_big_line(size))
            if "ndjson" in only:
                rows.append(("NDJSONDecoder.feed", partial(_ndjson, codecs, nd), line - 1))
            if "rewriter" in only:
                rows.append(("ModelLineRewriter.feed", partial(_rewriter, passthrough, nd), line))
        for name, fn, expect in rows:
            secs, peak = _time(fn, expect)
            print(f"| {name} | {mb} | {secs:.3f} | {peak:,.0f} |", flush=True)
        del rows
    if "tokens" in only:
        print(f"\ntokens: SSEDecoder.payloads, 50 token events in one read: {_tokens(codecs):.2f} us a stream")


if __name__ == "__main__":
    main()
