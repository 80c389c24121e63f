"""The dashboard's overview from request-log rows (store/series.py): buckets, percentiles, totals, groups."""

from __future__ import annotations

from typing import Any

from ollamux.store.series import BUCKETS, SERIES_COLUMNS, overview, window_for

NOW = 1_700_000_000.0  # a multiple of 60 plus 20 s: 1_699_999_980 + 20


def row(
    ts: float, model: str = "m", backend: str = "b", status: int = 200, lat: float = 100.0, **kw: Any
) -> tuple[Any, ...]:
    values = {
        "ts": ts,
        "model_requested": model,
        "backend": backend,
        "status": status,
        "latency_ms": lat,
        "ttft_ms": kw.get("ttft"),
        "prompt_tokens": kw.get("pt"),
        "completion_tokens": kw.get("ct"),
        "tokens_per_s": kw.get("tps"),
    }
    return tuple(values[c] for c in SERIES_COLUMNS)


def test_window_is_sixty_clock_aligned_buckets_ending_with_the_current_one() -> None:
    w = window_for(3600, NOW)
    assert (w.seconds, w.bucket) == (3600, 60)
    assert w.start == (NOW // 60) * 60 - 59 * 60
    assert w.start <= NOW - 3540 and NOW < w.start + BUCKETS * w.bucket
    day = window_for(86400, NOW)
    assert (day.seconds, day.bucket) == (86400, 1440)
    tiny = window_for(30, NOW)  # less than a second a bucket: one second each
    assert (tiny.seconds, tiny.bucket) == (60, 1)


def test_every_series_has_one_entry_per_bucket_and_empty_buckets_are_zero_or_null() -> None:
    w = window_for(3600, NOW)
    out = overview([], w)
    s = out["series"]
    assert set(s) == {
        "t",
        "requests",
        "rps",
        "errors",
        "error_rate",
        "p50_ms",
        "p95_ms",
        "ttft_p50_ms",
        "ttft_p95_ms",
        "tokens_per_s",
    }
    assert all(len(v) == BUCKETS for v in s.values())
    assert s["t"][0] == w.start and s["t"][1] - s["t"][0] == 60
    assert s["requests"] == [0] * BUCKETS and s["tokens_per_s"] == [0] * BUCKETS
    assert s["p50_ms"] == [None] * BUCKETS and s["error_rate"] == [None] * BUCKETS
    assert out["totals"]["requests"] == 0 and out["totals"]["p50_ms"] is None and out["totals"]["error_rate"] is None
    assert out["by_model"] == [] and out["by_backend"] == []
    assert (out["window"], out["bucket"], out["now"]) == (3600, 60, int(NOW))


def test_rows_land_in_their_bucket_with_counts_rates_and_percentiles() -> None:
    w = window_for(3600, NOW)
    last = w.start + 59 * 60
    rows = [
        row(last + 1, lat=10.0, ttft=5.0, ct=120),
        row(last + 2, lat=20.0, ttft=7.0, ct=60),
        row(last + 3, lat=300.0, status=500),
        row(w.start, lat=50.0),  # the first bucket's first second
    ]
    out = overview(rows, w)
    s = out["series"]
    assert s["requests"][-1] == 3 and s["requests"][0] == 1 and sum(s["requests"]) == 4
    assert s["errors"][-1] == 1 and s["error_rate"][-1] == round(1 / 3, 4)
    assert s["rps"][-1] == round(3 / 60, 4)
    assert s["p50_ms"][-1] == 20.0 and s["p95_ms"][-1] == 300.0  # nearest rank
    assert s["ttft_p50_ms"][-1] == 5.0 and s["ttft_p95_ms"][-1] == 7.0
    assert s["tokens_per_s"][-1] == 3.0  # 180 completion tokens over a 60 s bucket
    assert s["p50_ms"][0] == 50.0 and s["ttft_p50_ms"][0] is None
    t = out["totals"]
    assert (t["requests"], t["errors"], t["error_rate"]) == (4, 1, 0.25)
    assert t["completion_tokens"] == 180 and t["prompt_tokens"] == 0


def test_rows_outside_the_window_are_left_out() -> None:
    w = window_for(3600, NOW)
    out = overview([row(w.start - 1), row(w.start + BUCKETS * w.bucket + 5), row(NOW)], w)
    assert out["totals"]["requests"] == 1


def test_groups_by_model_and_backend_busiest_first() -> None:
    w = window_for(3600, NOW)
    rows = [
        row(NOW, model="a", backend="x", lat=10.0, tps=40.0),
        row(NOW, model="b", backend="x", lat=20.0, tps=10.0),
        row(NOW, model="b", backend="y", lat=30.0, status=404, tps=30.0),
        row(NOW, model=None, backend=None, lat=5.0),  # type: ignore[arg-type]
    ]
    out = overview(rows, w)
    models = {g["model"]: g for g in out["by_model"]}
    assert [g["model"] for g in out["by_model"]] == ["b", "-", "a"]
    assert models["b"]["requests"] == 2 and models["b"]["errors"] == 1
    assert models["b"]["p50_ms"] == 20.0 and models["b"]["p95_ms"] == 30.0
    assert models["b"]["tokens_per_s"] == 20.0  # the mean decode speed of its requests
    assert models["-"]["tokens_per_s"] is None
    assert set(models["a"]) == {"model", "requests", "errors", "p50_ms", "p95_ms", "ttft_p50_ms", "tokens_per_s"}
    backends = {g["backend"]: g["requests"] for g in out["by_backend"]}
    assert backends == {"x": 2, "y": 1, "-": 1}
    assert out["by_backend"][0]["backend"] == "x"
