"""The OpenTelemetry tracer: spans built with the SDK, batched, exported over OTLP/HTTP (protobuf).

Imported only when `tracing` is configured. Each app has its own TracerProvider (never the global one:
two apps in one process must not share an exporter) and its own W3C trace-context propagator.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from contextvars import Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..config.settings import TracingSettings
from ..masks import mask_url
from ..observe import RequestRecord
from ..version import __version__
from . import AttemptSpan, RequestSpan

__all__ = ["CLOSE_WAIT", "OtelTracer"]

log = logging.getLogger("ollamux")

# seconds the spans still queued at shutdown may take to leave: a collector that hangs must not hold the stop
# (the SDK's own shutdown waits up to 30 s, a whole Kubernetes grace period)
CLOSE_WAIT = 5.0
# where the SDK warns about the trace-context headers a client sent (too long, malformed, too many members):
# the client decides what they say, so once for the operator, not once per request
_HEADER_LOGGERS = ("opentelemetry.trace.propagation.tracecontext", "opentelemetry.trace.span")


class _ClientHeaderNoise(logging.Filter):
    """Drops the SDK's warnings about incoming trace-context headers, after saying the first one once."""

    def __init__(self) -> None:
        super().__init__()
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:
            return True
        if not self.said:
            self.said = True
            log.warning(
                "tracing: a client sent trace-context headers that are not valid (%s); such headers are ignored "
                "(the request starts a new trace) and not logged again",
                record.getMessage()[:200],
            )
        return False


class _Request:
    __slots__ = ("span", "token")

    def __init__(self, span: Span, token: Token[Context]) -> None:
        self.span = span
        self.token = token


class OtelTracer:
    enabled = True

    def __init__(self, settings: TracingSettings) -> None:
        resource = Resource.create({"service.name": settings.service_name, "service.version": __version__})
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
            resource=resource,
            shutdown_on_exit=False,  # the app's lifespan shuts it down, flushing what is queued
        )
        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, headers=dict(settings.headers), timeout=10)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("ollamux", __version__)
        self.propagator = TraceContextTextMapPropagator()
        self.endpoint = mask_url(settings.otlp_endpoint)
        self._noise = _ClientHeaderNoise()
        for name in _HEADER_LOGGERS:
            logging.getLogger(name).addFilter(self._noise)

    # ------------------------------------------------------------------------------------- requests
    def request_started(self, headers: Mapping[str, str], rec: RequestRecord) -> RequestSpan | None:
        parent = self.propagator.extract(headers)  # a malformed traceparent is ignored: a new trace
        route = rec.route_name or rec.route
        span = self.tracer.start_span(
            f"{rec.method} {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": rec.method,
                "http.route": route,
                "url.path": rec.route,
                "ollamux.api": rec.api,
                "ollamux.request_id": rec.id,
            },
        )
        # the current span of this request's task: the attempts' spans become its children
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return _Request(span, token)

    def request_finished(self, span: RequestSpan, rec: RequestRecord) -> None:
        assert isinstance(span, _Request)
        s = span.span
        attrs: dict[str, Any] = {"http.response.status_code": rec.status, "ollamux.streamed": rec.streamed}
        for key, value in (
            ("gen_ai.request.model", rec.model_requested),
            ("gen_ai.response.model", rec.model_served),
            ("ollamux.model_served", rec.model_served),
            ("ollamux.backend", rec.backend),
            ("gen_ai.usage.input_tokens", rec.prompt_tokens),
            ("gen_ai.usage.output_tokens", rec.completion_tokens),
            ("ollamux.key_name", rec.key_name),
        ):
            if value is not None:
                attrs[key] = value if isinstance(value, str | int) else str(value)
        if rec.abandoned:
            attrs["ollamux.abandoned"] = True
        s.set_attributes(attrs)
        # 4xx is the client's, not a server error; an error after a 200 went out (a stream cut off) is
        if rec.status >= 500 or (rec.error and rec.status < 400):
            s.set_status(Status(StatusCode.ERROR, rec.error or f"HTTP {rec.status}"))
        s.end()
        otel_context.detach(span.token)

    # ------------------------------------------------------------------------------------- attempts
    def attempt_started(
        self,
        *,
        method: str,
        url: str,
        backend: str,
        model: str,
        attempt: int,
        retry: bool,
        fallback: bool,
        headers: dict[str, str] | None,
    ) -> tuple[AttemptSpan | None, dict[str, str] | None]:
        shown = mask_url(url)
        span = self.tracer.start_span(
            f"{method} {backend}",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": method,
                "url.full": shown,
                "ollamux.backend": backend,
                "gen_ai.request.model": model,
                "ollamux.attempt": attempt,
                "ollamux.retry": retry,
                "ollamux.fallback": fallback,
            },
        )
        out = dict(headers) if headers else {}
        self.propagator.inject(out, context=trace.set_span_in_context(span))
        return span, out

    def attempt_finished(self, span: AttemptSpan, *, status: int | None = None, error: str | None = None) -> None:
        assert isinstance(span, Span)
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            span.set_attribute("error.type", str(status) if status is not None else "connection")
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    async def close(self) -> None:
        for name in _HEADER_LOGGERS:
            logging.getLogger(name).removeFilter(self._noise)
        # the batch processor exports from its own thread, and its shutdown blocks until the last batch is
        # taken or 30 s pass: run it on a daemon thread (not to_thread: the executor's threads are joined at
        # exit) and wait CLOSE_WAIT at most
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def shutdown() -> None:
            try:
                self.provider.shutdown()
            finally:
                try:
                    loop.call_soon_threadsafe(finished)
                except RuntimeError:  # the loop closed meanwhile: nobody waits any more
                    pass

        threading.Thread(target=shutdown, name="ollamux-tracing-close", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(done), CLOSE_WAIT)
        except TimeoutError:
            log.warning(
                "tracing: the collector at %s took no spans within %g s at shutdown; the spans still queued are "
                "dropped",
                self.endpoint,
                CLOSE_WAIT,
            )
