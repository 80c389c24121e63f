"""Prometheus metrics on a registry owned by one app (two apps in one process never share a series).

Per-request series are updated by `Metrics`, an observer; everything that has a current value somewhere
else (log drops, backend reachability, managed model state) is read at scrape time by collectors, so the
request path pays only for what truly happens per request.

Managed model state is read at scrape time from the runtime (`state.runtime.models`, see api/ops.py);
a runtime can also push it with `Metrics.set_model_state`. Load time is pushed by the runtime with
`Metrics.observe_model_load(model, seconds)` (the app's `Metrics` is `state.extras["metrics"]`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from .observe import RequestRecord

__all__ = ["CONTENT_TYPE", "MODEL_STATES", "Metrics", "log_collector"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# the states a managed model goes through; each model reports 1 for its current state, 0 for the others
MODEL_STATES = ("stopped", "starting", "ready", "stopping", "failed")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LOAD_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _Children(NamedTuple):
    """The labelled series one (api, route, model, backend, status) combination updates."""

    requests: Any
    latency: Any
    ttft: Any
    prompt: Any
    completion: Any


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
        labels = ("api", "route", "model", "backend")
        self.requests = Counter(
            "ollamux_requests", "API requests by outcome", (*labels, "status"), registry=r
        )
        self.latency = Histogram(
            "ollamux_request_duration_seconds", "Total request time, to the last byte of a stream", labels,
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "ollamux_time_to_first_token_seconds", "Time from the request to the first generated token", labels,
            buckets=TTFT_BUCKETS, registry=r,
        )
        self.prompt_tokens = Counter(
            "ollamux_prompt_tokens", "Prompt (input) tokens, as the backend counted them", ("model", "backend"),
            registry=r,
        )
        self.completion_tokens = Counter(
            "ollamux_completion_tokens", "Completion (output) tokens, as the backend counted them",
            ("model", "backend"), registry=r,
        )
        self.in_flight = Gauge("ollamux_requests_in_flight", "API requests being handled", registry=r)
        self.backend_up = Gauge(
            "ollamux_backend_up", "1 if the backend answered its last reachability probe", ("backend",), registry=r
        )
        self.model_load = Histogram(
            "ollamux_model_load_seconds", "Time a managed model took to become ready", ("model",),
            buckets=LOAD_BUCKETS, registry=r,
        )
        info = Gauge("ollamux_build_info", "The running ollamux version", ("version",), registry=r)
        info.labels(version).set(1)
        Gauge("ollamux_start_time_seconds", "Unix time the server started", registry=r).set(
            started_at if started_at is not None else time.time()
        )
        self.model_states: dict[str, str] = {}
        self._state_source: Callable[[], Iterable[tuple[str, str]]] | None = None
        self._children: dict[tuple[str, str, str, str, int], _Children] = {}
        r.register(_Callback(self._collect_model_states))

    # ------------------------------------------------------------------------------ observer
    def request_started(self, rec: RequestRecord) -> None:
        self.in_flight.inc()

    def request_finished(self, rec: RequestRecord) -> None:
        self.in_flight.dec()
        key = (rec.api, rec.route_name or rec.route, rec.model_served or "", rec.backend or "", rec.status)
        ch = self._children.get(key)
        if ch is None:
            ch = self._children[key] = self._make_children(key)
        ch.requests.inc()
        ch.latency.observe(rec.latency_s)
        if rec.first_token_ns is not None:
            ch.ttft.observe((rec.first_token_ns - rec.start_ns) / 1e9)
        if rec.prompt_tokens:
            ch.prompt.inc(rec.prompt_tokens)
        if rec.completion_tokens:
            ch.completion.inc(rec.completion_tokens)

    def _make_children(self, key: tuple[str, str, str, str, int]) -> _Children:
        # labels() takes a lock and hashes its arguments: done once per combination, not per request
        api, route, model, backend, status = key
        return _Children(
            self.requests.labels(api, route, model, backend, str(status)),
            self.latency.labels(api, route, model, backend),
            self.ttft.labels(api, route, model, backend),
            self.prompt_tokens.labels(model, backend),
            self.completion_tokens.labels(model, backend),
        )

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
