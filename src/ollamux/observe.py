"""What one request did, filled in as it goes, handed to the observers (request log, metrics) at its end.

Handlers only set fields; observers decide what to keep. Observers run on the event loop and must not
block: the request log queues the record and writes it off the request path.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from .jsonutil import count_or_none

__all__ = ["CURRENT_REQUEST_ID", "Observer", "Observers", "RequestRecord", "StartObserver", "new_request_id"]

log = logging.getLogger("ollamux")

# the API a client spoke: it picks the error envelope and labels the log row and metrics
ApiName = Literal["ollama", "openai", "responses", "anthropic", "admin", "other"]


# The id of the request being handled, so operator log lines written deep inside a handler carry it.
CURRENT_REQUEST_ID: ContextVar[str | None] = ContextVar("ollamux_request_id", default=None)


# Request ids: a random per-process prefix and a counter, 32 hex digits like uuid4().hex. Unique without a
# syscall per request (uuid4 reads os.urandom each time: ~2.5 us, measured as a hot spot under load).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


@dataclass(slots=True)
class RequestRecord:
    id: str
    api: ApiName
    route: str
    method: str = "POST"
    route_name: str | None = None  # the route's pattern (/api/blobs/{digest}): a bounded metrics label
    client: str | None = None
    key_name: str | None = None
    started: float = field(default_factory=time.time)  # wall clock, for the log
    start_ns: int = field(default_factory=time.perf_counter_ns)  # monotonic, for durations
    model_requested: str | None = None
    model_served: str | None = None
    backend: str | None = None
    upstream_url: str | None = None
    status: int = 0
    streamed: bool = False
    first_token_ns: int | None = None
    end_ns: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    abandoned: bool = False
    request_body: bytes | None = None
    response_text: str | None = None
    # what a stream without usage is charged by (guard.core, token limits): never logged as counts
    body_bytes: int = 0  # the request body's size
    # the stream's frames sent (SSE events, NDJSON lines); None: not counted (no token limits: a scan of every
    # write saved)
    frames: int | None = None

    def count_tokens(self, prompt: object, completion: object) -> None:
        """The token counts a backend reported, each kept only when it is a count (`count_or_none`); what is
        not one leaves the field as it was. So a count sent as a string, or past 64 bits, never reaches the
        log, the metrics' sums or the token limits, which all read these fields as integers. Every count a
        backend reports enters a record through here."""
        prompt, completion = count_or_none(prompt), count_or_none(completion)
        if prompt is not None:
            self.prompt_tokens = prompt
        if completion is not None:
            self.completion_tokens = completion

    @property
    def latency_s(self) -> float:
        end = self.end_ns if self.end_ns is not None else time.perf_counter_ns()
        return (end - self.start_ns) / 1e9

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_ns is None else (self.first_token_ns - self.start_ns) / 1e9


class Observer(Protocol):
    """Told of every finished request (the request log, metrics, the operator's lines)."""

    def request_finished(self, rec: RequestRecord) -> None: ...


@runtime_checkable
class StartObserver(Observer, Protocol):
    """Also told when a request starts (the guard, which counts a stream's frames only for token limits)."""

    def request_started(self, rec: RequestRecord) -> None: ...


class Observers:
    """Fans records out to every observer; one failing observer never fails a request.

    It counts the requests in flight itself (`in_flight`: read by the metrics and the admin overview), and
    calls at a request's start only the observers that have a `request_started`: a call a request for an
    observer that does nothing with it is ~1 K instructions on the event loop, for every request.
    """

    def __init__(self, observers: list[Observer] | None = None) -> None:
        self.in_flight = 0
        self._all: list[Observer] = []
        self._starting: list[StartObserver] = []
        self.observers = list(observers or [])

    @property
    def observers(self) -> list[Observer]:
        return list(self._all)

    @observers.setter
    def observers(self, observers: list[Observer]) -> None:
        self._all = list(observers)
        self._starting = [o for o in self._all if isinstance(o, StartObserver)]

    def add(self, obs: Observer) -> None:
        self.observers = [*self._all, obs]

    def started(self, rec: RequestRecord) -> None:
        self.in_flight += 1
        for o in self._starting:
            try:
                o.request_started(rec)
            except Exception:  # pragma: no cover - an observer bug must not become a 500
                log.exception("observer failed at request start")

    def finished(self, rec: RequestRecord) -> None:
        self.in_flight -= 1
        if rec.end_ns is None:
            rec.end_ns = time.perf_counter_ns()
        for o in self._all:
            try:
                o.request_finished(rec)
            except Exception:  # pragma: no cover
                log.exception("observer failed at request end")
