"""Histogram sums and bucket edges of the request series: kept in integer nanoseconds per request, shown in
seconds, exact (what a PromQL `rate(_sum) / rate(_count)` reads as the mean)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ollamux.metrics import Metrics
from ollamux.observe import RequestRecord


def _samples(m: Metrics, family: str) -> dict[str, float]:
    fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    out: dict[str, float] = {}
    for s in fams[family].samples:
        key = s.name[len(family) :].lstrip("_") + (f"{{{s.labels['le']}}}" if "le" in s.labels else "")
        out[key] = s.value
    return out


def _finish(m: Metrics, latency_ns: int, ttft_ns: int | None) -> None:
    rec = RequestRecord(id="x", api="openai", route="/v1/chat/completions", model_served="m", backend="b", status=200)
    rec.end_ns = rec.start_ns + latency_ns
    rec.first_token_ns = None if ttft_ns is None else rec.start_ns + ttft_ns
    m.request_finished(rec)


def test_sums_are_seconds_and_bounds_are_inclusive() -> None:
    m = Metrics()
    _finish(m, 5_000_000, 10_000_000)  # exactly on the 0.005 s latency bound (and the 0.01 s ttft one)
    _finish(m, 5_000_001, None)  # one nanosecond past it, no first token
    _finish(m, 2_500_000_000, 250_000_000)
    lat = _samples(m, "ollamux_request_duration_seconds")
    assert lat["bucket{0.005}"] == 1 and lat["bucket{0.01}"] == 2 and lat["bucket{2.5}"] == 3
    assert lat["count"] == 3 and lat["sum"] == 2.510000001
    ttft = _samples(m, "ollamux_time_to_first_token_seconds")
    assert ttft["bucket{0.01}"] == 1 and ttft["bucket{0.25}"] == 2 and ttft["count"] == 2
    assert ttft["sum"] == 0.26


def test_a_record_without_an_end_is_timed_to_now() -> None:
    """An observer may be handed a record no `Observers.finished` closed (a test, a guard refusal path)."""
    m = Metrics()
    rec = RequestRecord(id="x", api="ollama", route="/api/chat", status=200)
    m.request_finished(rec)
    lat = _samples(m, "ollamux_request_duration_seconds")
    assert lat["count"] == 1 and 0 <= lat["sum"] < 60
