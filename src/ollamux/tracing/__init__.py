"""Traces: one small interface the request path calls, and its no-op when tracing is off.

`open_tracer(settings.tracing)` gives the app its `Tracer`. With no `tracing` section it is `NO_TRACER`,
and opentelemetry is never imported (`otel.py` is loaded only when tracing is on), so start-up and the hot
path cost what they did: callers test `tracer.enabled`, one attribute read, before doing anything else.

Two places call it: the endpoint wrapper (`api/common.endpoint`: one SERVER span per request, the incoming
`traceparent` honoured) and the failover loop (`backends/failover`: one CLIENT span per upstream attempt,
child of the request's, its own `traceparent` sent upstream), so retries and fallbacks each show as a span.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from ..config.settings import ConfigError, TracingSettings

if TYPE_CHECKING:
    from ..observe import RequestRecord

__all__ = ["NO_TRACER", "AttemptSpan", "RequestSpan", "Tracer", "check_tracing", "open_tracer"]


class RequestSpan(Protocol):
    """The SERVER span of one request, open while its handler runs (the current span of its task)."""


class AttemptSpan(Protocol):
    """The CLIENT span of one upstream attempt."""


class Tracer(Protocol):
    enabled: bool

    def request_started(self, headers: Mapping[str, str], rec: RequestRecord) -> RequestSpan | None: ...

    def request_finished(self, span: RequestSpan, rec: RequestRecord) -> None: ...

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
        """Start an attempt's span under the current request span; returns it and the headers to send
        (the caller's, plus this attempt's `traceparent`)."""
        ...

    def attempt_finished(self, span: AttemptSpan, *, status: int | None = None, error: str | None = None) -> None: ...

    async def close(self) -> None:
        """Export what is queued and stop (the app's lifespan calls it last)."""
        ...


class _NoTracer:
    enabled = False

    def request_started(self, headers: Mapping[str, str], rec: RequestRecord) -> RequestSpan | None:
        return None

    def request_finished(self, span: RequestSpan, rec: RequestRecord) -> None:
        return None

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
        return None, headers

    def attempt_finished(self, span: AttemptSpan, *, status: int | None = None, error: str | None = None) -> None:
        return None

    async def close(self) -> None:
        return None


NO_TRACER: Tracer = _NoTracer()


def check_tracing(settings: TracingSettings | None) -> None:
    """A ConfigError when tracing is configured but the SDK is not installed (said at start, not mid-lifespan)."""
    if settings is None:
        return
    import importlib.util

    for module in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # its parent package is missing
            found = False
        if not found:
            raise ConfigError(
                "tracing", f"needs the otel extra ({module} is not installed): pip install 'ollamux[otel]'"
            )


def open_tracer(settings: TracingSettings | None) -> Tracer:
    if settings is None:
        return NO_TRACER
    from .otel import OtelTracer  # only now: tracing off never imports opentelemetry

    return OtelTracer(settings)
