"""One small exception tree. Each error knows its HTTP status and renders itself in both envelopes.

Errors are raised where they are detected (parsing, routing, the backend boundary) and rendered once,
at the API boundary, in the envelope of the API the client spoke.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

__all__ = [
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "BadRequest",
    "EventTooLarge",
    "Forbidden",
    "ModelNotFound",
    "NotImplementedByProxy",
    "OllamuxError",
    "PayloadTooLarge",
    "RateLimited",
    "ServiceUnavailable",
    "Unauthorized",
    "UpstreamError",
    "anthropic_error_type",
    "openai_error_type",
]


def openai_error_type(status: int) -> str:
    # Ollama's own OpenAI layer uses exactly these three types; the openai SDK maps on status anyway.
    if status == 400:
        return "invalid_request_error"
    if status == 404:
        return "not_found_error"
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    return "api_error"


def anthropic_error_type(status: int) -> str:
    """Anthropic's error types by status (docs.anthropic.com, "Errors"); the SDK maps on status too."""
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error")


class OllamuxError(Exception):
    """Base of every error the server turns into an HTTP answer."""

    status: int = 500

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.param = param
        self.code = code
        self.headers = headers or {}

    def ollama_body(self) -> bytes:
        return orjson.dumps({"error": self.message})

    def openai_payload(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": openai_error_type(self.status),
                "param": self.param,
                "code": self.code,
            }
        }

    def openai_body(self) -> bytes:
        return orjson.dumps(self.openai_payload())

    def anthropic_payload(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": anthropic_error_type(self.status), "message": self.message}}

    def body_for(self, api: str) -> bytes:
        """The error in the envelope of the API the client spoke ("openai", "responses" and the dashboard's
        "admin" share one)."""
        if api in ("openai", "responses", "admin"):
            return self.openai_body()
        if api == "anthropic":
            return orjson.dumps(self.anthropic_payload())
        return self.ollama_body()


class BadRequest(OllamuxError):
    status = 400


class Unauthorized(OllamuxError):
    status = 401


class Forbidden(OllamuxError):
    status = 403


class ModelNotFound(OllamuxError):
    status = 404

    def __init__(self, model: str, suggestions: Sequence[str] = ()) -> None:
        # Ollama's exact wording first: clients and people search for it (and SDK tests match on the name);
        # then a few names that do exist, so a typo or a missing tag is one glance away from fixed
        message = f"model '{model}' not found"
        if suggestions:
            message += "; try one of: " + ", ".join(suggestions)
        super().__init__(message, code="model_not_found")
        self.model = model
        self.suggestions = tuple(suggestions)


class NotImplementedByProxy(OllamuxError):
    status = 501


class PayloadTooLarge(OllamuxError):
    status = 413


class RateLimited(OllamuxError):
    status = 429


class ServiceUnavailable(OllamuxError):
    status = 503


class BackendError(OllamuxError):
    """A failure on the way to or from a backend; `retryable` says a fallback may try elsewhere."""

    status = 502
    retryable = True


class BackendUnavailable(BackendError):
    status = 502


class BackendTimeout(BackendError):
    status = 504


class UpstreamError(BackendError):
    """The backend answered with an error status; its status and message are passed through."""

    def __init__(self, message: str, *, status: int, body: bytes = b"") -> None:
        super().__init__(message, status=status)
        self.body = body
        self.retryable = status >= 500 or status == 429


class EventTooLarge(UpstreamError):
    """One stream event (SSE) or line (NDJSON) grew past the backend's `max_event_bytes`.

    Raised by the decoders as soon as the unfinished event passes the limit, so one runaway upstream
    cannot make the relay hold an unbounded buffer; it happens mid-stream, after the first byte, so it
    ends the stream with an error frame rather than choosing a fallback.
    """

    def __init__(self, limit: int, *, unit: str = "event") -> None:
        super().__init__(f"backend sent a stream {unit} larger than {limit} bytes (max_event_bytes)", status=502)
        self.limit = limit
