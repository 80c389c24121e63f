"""Prometheus metrics on a registry owned by one app (two apps in one process never share a series).

Per-request series are updated by `Metrics`, an observer; everything that has a current value somewhere
else (log drops, backend reachability, managed model state) is read at scrape time by collectors, so the
request path pays only for what truly happens per request.

Managed model state is read at scrape time from the runtime (`state.runtime.models`, see api/ops.py);
a runtime can also push it with `Metrics.set_model_state`. Load time is pushed by the runtime with
`Metrics.observe_model_load(model, seconds)` (the app's `Metrics` is `state.metrics`).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from .observe import RequestRecord

__all__ = ["CONTENT_TYPE", "MODEL_STATES", "Metrics", "log_collector"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# the states a managed model goes through; each model reports 1 for its current state, 0 for the others
MODEL_STATES = ("stopped", "starting", "ready", "stopping", "failed", "restarting")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LOAD_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# the bounds in integer nanoseconds: a request's durations are bucketed and summed as the integers the
# record holds, with no float made per request (the sums become seconds at scrape time)
_LATENCY_NS = tuple(round(b * 1e9) for b in LATENCY_BUCKETS)
_TTFT_NS = tuple(round(b * 1e9) for b in TTFT_BUCKETS)


class _Series:
    """What one (api, route, model, backend, status) combination accumulated; only the event loop writes.

    Plain integers and lists, no locks: prometheus_client's own metrics take a lock per update, which
    made the per-request cost several times higher. Scrapes read a snapshot (see `_collect_requests`).
    """

    __slots__ = ("completion", "count", "lat", "lat_sum", "prompt", "ttft", "ttft_sum")

    def __init__(self) -> None:
        self.count = 0
        self.lat = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.lat_sum = 0  # nanoseconds
        self.ttft = [0] * (len(TTFT_BUCKETS) + 1)
        self.ttft_sum = 0  # nanoseconds
        self.prompt = 0
        self.completion = 0


class _Callback:
    """A scrape-time collector built from a function (registered once, read on every scrape)."""

    def __init__(self, fn: Callable[[], Iterable[Metric]]) -> None:
        self.fn = fn

    def collect(self) -> Iterable[Metric]:
        return self.fn()

    def describe(self) -> Iterable[Metric]:
        return ()  # no auto-describe: the functions read live state, which may not exist yet


class Metrics:
    """The app's metrics and its registry; an observer of every API request."""

    def __init__(self, version: str = "", started_at: float | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.backend_up = Gauge(
            "ollamux_backend_up", "1 if the backend answered its last reachability probe", ("backend",), registry=r
        )
        self.model_load = Histogram(
            "ollamux_model_load_seconds",
            "Time a managed model took to become ready",
            ("model",),
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        info = Gauge("ollamux_build_info", "The running ollamux version", ("version",), registry=r)
        info.labels(version).set(1)
        Gauge("ollamux_start_time_seconds", "Unix time the server started", registry=r).set(
            started_at if started_at is not None else time.time()
        )
        self.model_states: dict[str, str] = {}
        self._state_source: Callable[[], Iterable[tuple[str, str]]] | None = None
        self._series: dict[tuple[str, str, str, str, int], _Series] = {}
        self._in_flight: Callable[[], int] = lambda: 0
        r.register(_Callback(self._collect_requests))
        r.register(_Callback(self._collect_model_states))

    # ------------------------------------------------------------------------------ observer
    def request_finished(self, rec: RequestRecord) -> None:
        key = (rec.api, rec.route_name or rec.route, rec.model_served or "", rec.backend or "", rec.status)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series()
        s.count += 1
        start, end, first = rec.start_ns, rec.end_ns, rec.first_token_ns
        lat = (end if end is not None else time.perf_counter_ns()) - start
        s.lat[bisect_left(_LATENCY_NS, lat)] += 1  # le: the first bound >= the value
        s.lat_sum += lat
        if first is not None:
            ttft = first - start
            s.ttft[bisect_left(_TTFT_NS, ttft)] += 1
            s.ttft_sum += ttft
        if rec.prompt_tokens:
            s.prompt += rec.prompt_tokens
        if rec.completion_tokens:
            s.completion += rec.completion_tokens

    def _collect_requests(self) -> Iterator[Metric]:
        # list() copies atomically under the GIL: the loop may add a series while a scrape runs
        snapshot = [
            (k, s.count, list(s.lat), s.lat_sum / 1e9, list(s.ttft), s.ttft_sum / 1e9, s.prompt, s.completion)
            for k, s in list(self._series.items())
        ]
        requests = CounterMetricFamily(
            "ollamux_requests", "API requests by outcome", labels=("api", "route", "model", "backend", "status")
        )
        hist_labels = ("api", "route", "model", "backend")
        lat_h: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        ttft_h: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        prompt: dict[tuple[str, str], int] = {}
        completion: dict[tuple[str, str], int] = {}
        for (api, route, model, backend, status), count, lat, lat_sum, ttft, ttft_sum, pt, ct in snapshot:
            requests.add_metric((api, route, model, backend, str(status)), float(count))
            for agg, buckets, total in ((lat_h, lat, lat_sum), (ttft_h, ttft, ttft_sum)):
                acc = agg.setdefault((api, route, model, backend), ([0] * len(buckets), [0.0]))
                for i, n in enumerate(buckets):
                    acc[0][i] += n
                acc[1][0] += total
            prompt[(model, backend)] = prompt.get((model, backend), 0) + pt
            completion[(model, backend)] = completion.get((model, backend), 0) + ct
        yield requests
        for name, doc, bounds, agg in (
            (
                "ollamux_request_duration_seconds",
                "Total request time, to the last byte of a stream",
                LATENCY_BUCKETS,
                lat_h,
            ),
            (
                "ollamux_time_to_first_token_seconds",
                "Time from the request to the first generated token",
                TTFT_BUCKETS,
                ttft_h,
            ),
        ):
            fam = HistogramMetricFamily(name, doc, labels=hist_labels)
            for labels, (per_bucket, acc_sum) in agg.items():
                cumulative: list[tuple[str, float]] = []
                running = 0
                for bound, n in zip((*(str(b) for b in bounds), "+Inf"), per_bucket, strict=True):
                    running += n
                    cumulative.append((bound, float(running)))
                fam.add_metric(labels, cumulative, acc_sum[0])
            yield fam
        for cname, cdoc, values in (
            ("ollamux_prompt_tokens", "Prompt (input) tokens, as the backend counted them", prompt),
            ("ollamux_completion_tokens", "Completion (output) tokens, as the backend counted them", completion),
        ):
            fam_c = CounterMetricFamily(cname, cdoc, labels=("model", "backend"))
            for labels2, v in values.items():
                fam_c.add_metric(labels2, float(v))
            yield fam_c
        gauge = GaugeMetricFamily("ollamux_requests_in_flight", "API requests being handled")
        gauge.add_metric((), float(self._in_flight()))
        yield gauge

    # ------------------------------------------------------------------------------ reported by services
    def set_backend_up(self, backend: str, up: bool) -> None:
        self.backend_up.labels(backend).set(1 if up else 0)

    def set_model_state(self, model: str, state: str) -> None:
        """The managed runtime reports a model's new state (one of MODEL_STATES, or its own word)."""
        self.model_states[model] = state

    def observe_model_load(self, model: str, seconds: float) -> None:
        self.model_load.labels(model).observe(seconds)

    def add_collector(self, fn: Callable[[], Iterable[Metric]]) -> None:
        """Register a function that yields metric families read at scrape time."""
        self.registry.register(_Callback(fn))

    def add_in_flight_source(self, fn: Callable[[], int]) -> None:
        """Where the requests in flight are counted (`Observers.in_flight`), read at scrape time."""
        self._in_flight = fn

    def add_model_state_source(self, fn: Callable[[], Iterable[tuple[str, str]]]) -> None:
        """A function yielding (model, state) pairs read at scrape time (the runtime's own view)."""
        self._state_source = fn

    def _collect_model_states(self) -> Iterator[Metric]:
        states = dict(self.model_states)
        if self._state_source is not None:
            try:
                states.update(dict(self._state_source()))
            except Exception:  # pragma: no cover - a runtime bug must not break the scrape
                pass
        fam = GaugeMetricFamily(
            "ollamux_model_state", "1 for the current state of each managed model", labels=("model", "state")
        )
        for model in sorted(states):
            current = states[model]
            for s in (*MODEL_STATES, *(() if current in MODEL_STATES else (current,))):
                fam.add_metric((model, s), 1.0 if s == current else 0.0)
        yield fam

    def render(self) -> bytes:
        return generate_latest(self.registry)


def log_collector(get_log: Callable[[], Any]) -> Callable[[], Iterator[Metric]]:
    """Scrape-time series of the request log: rows written, dropped, queued."""

    def collect() -> Iterator[Metric]:
        rl = get_log()
        written = CounterMetricFamily("ollamux_log_rows_written", "Request log rows written to the store")
        dropped = CounterMetricFamily(
            "ollamux_log_rows_dropped", "Request log rows dropped (queue full, store unavailable or failing)"
        )
        queued = GaugeMetricFamily("ollamux_log_queue_depth", "Request log rows waiting for the writer")
        written.add_metric((), float(rl.written if rl else 0))
        dropped.add_metric((), float(rl.dropped if rl else 0))
        queued.add_metric((), float(rl.queued if rl else 0))
        yield written
        yield dropped
        yield queued

    return collect
