"""The dashboard's overview from request-log rows (pure): time series per bucket, totals, per model and backend.

Rows in, one JSON-ready dict out; the caller fetches only `SERIES_COLUMNS` for the window, in a worker
thread. Percentiles are nearest-rank over the rows themselves (`reader.percentile`): a window of a day
holds at most the log's retention, and sorting a few hundred thousand floats takes well under a second.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .reader import percentile

__all__ = ["BUCKETS", "SERIES_COLUMNS", "Window", "overview", "window_for"]

BUCKETS = 60  # points per chart, whatever the window
# what `overview` reads of each row, in this order
SERIES_COLUMNS = (
    "ts",
    "model_requested",
    "backend",
    "status",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "tokens_per_s",
)
Row = Sequence[Any]


@dataclass(frozen=True)
class Window:
    """`BUCKETS` buckets of `bucket` seconds; the last one holds `now`."""

    seconds: int
    bucket: int
    start: float  # unix time of the first bucket's start (rows before it are outside)
    now: float


def window_for(seconds: int, now: float) -> Window:
    """The window of about `seconds` ending now, cut into whole-second buckets aligned on the clock (so two
    polls a few seconds apart put a request in the same bucket)."""
    bucket = max(1, seconds // BUCKETS)
    last = math.floor(now / bucket) * bucket
    return Window(seconds=bucket * BUCKETS, bucket=bucket, start=last - (BUCKETS - 1) * bucket, now=now)


@dataclass
class _Acc:
    requests: int = 0
    errors: int = 0
    lat: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    prompt: int = 0
    completion: int = 0
    tps: list[float] = field(default_factory=list)

    def add(self, row: Row) -> None:
        _, _, _, status, lat, ttft, pt, ct, tps = row
        self.requests += 1
        if status >= 400:
            self.errors += 1
        self.lat.append(lat)
        if ttft is not None:
            self.ttft.append(ttft)
        self.prompt += pt or 0
        self.completion += ct or 0
        if tps is not None:
            self.tps.append(tps)

    def sort(self) -> None:
        self.lat.sort()
        self.ttft.sort()

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _group(key: str, name: str, acc: _Acc) -> dict[str, Any]:
    acc.sort()
    return {
        key: name,
        "requests": acc.requests,
        "errors": acc.errors,
        "p50_ms": _ms(percentile(acc.lat, 50)),
        "p95_ms": _ms(percentile(acc.lat, 95)),
        "ttft_p50_ms": _ms(percentile(acc.ttft, 50)),
        # mean decode speed of its requests that reported tokens (a rate per request, not per window)
        "tokens_per_s": round(sum(acc.tps) / len(acc.tps), 2) if acc.tps else None,
    }


def overview(rows: Iterable[Row], window: Window) -> dict[str, Any]:
    """The overview of `rows` (`SERIES_COLUMNS` each) inside `window`: every series has one entry per
    bucket (an empty bucket: 0 counts, null latencies); by_model and by_backend busiest first."""
    buckets = [_Acc() for _ in range(BUCKETS)]
    total = _Acc()
    models: dict[str, _Acc] = {}
    backends: dict[str, _Acc] = {}
    for row in rows:
        i = int((row[0] - window.start) // window.bucket)
        if not 0 <= i < BUCKETS:
            continue  # outside the window (a clock step, or a row the query let through)
        buckets[i].add(row)
        total.add(row)
        models.setdefault(row[1] or "-", _Acc()).add(row)
        backends.setdefault(row[2] or "-", _Acc()).add(row)
    for b in buckets:
        b.sort()
    total.sort()
    width = window.bucket
    series = {
        "t": [int(window.start + i * width) for i in range(BUCKETS)],
        "requests": [b.requests for b in buckets],
        "rps": [round(b.requests / width, 4) for b in buckets],
        "errors": [b.errors for b in buckets],
        "error_rate": [None if b.error_rate is None else round(b.error_rate, 4) for b in buckets],
        "p50_ms": [_ms(percentile(b.lat, 50)) for b in buckets],
        "p95_ms": [_ms(percentile(b.lat, 95)) for b in buckets],
        "ttft_p50_ms": [_ms(percentile(b.ttft, 50)) for b in buckets],
        "ttft_p95_ms": [_ms(percentile(b.ttft, 95)) for b in buckets],
        "tokens_per_s": [round(b.completion / width, 4) for b in buckets],
    }
    totals = {
        "requests": total.requests,
        "errors": total.errors,
        "error_rate": None if total.error_rate is None else round(total.error_rate, 4),
        "p50_ms": _ms(percentile(total.lat, 50)),
        "p95_ms": _ms(percentile(total.lat, 95)),
        "ttft_p50_ms": _ms(percentile(total.ttft, 50)),
        "prompt_tokens": total.prompt,
        "completion_tokens": total.completion,
    }

    def ranked(key: str, groups: dict[str, _Acc]) -> list[dict[str, Any]]:
        return [_group(key, n, a) for n, a in sorted(groups.items(), key=lambda kv: (-kv[1].requests, kv[0]))]

    return {
        "window": window.seconds,
        "bucket": window.bucket,
        "now": int(window.now),
        "series": series,
        "totals": totals,
        "by_model": ranked("model", models),
        "by_backend": ranked("backend", backends),
    }
