"""The Redis that many instances share (`shared_state`): one connection pool, whether it answers, and the
way back when it does not.

Only the rate limits live there (guard/shared_limits.py). Not shared, on purpose:
- circuit breakers (backends/http.py): each instance trips on what its own network path to a replica does;
  a shared breaker would let one instance's local fault (a full conntrack table, a bad route) take a
  healthy replica away from every instance;
- replica cooldowns: there are none beyond the breaker's. A backend's 429 Retry-After is honoured by the
  request that got it, within its retry budget; the next request may find the backend willing again, and
  a shared pause would turn one tenant's 429 into a pause for all;
- concurrency gates (limits.concurrency): they guard this instance's sockets and the backend's slots as
  this instance uses them; a semaphore across instances needs leases that expire with a crashed holder.

When Redis fails (connect error, timeout, READONLY, a wrong password), the first failure marks it down and
logs one warning; requests stop asking it at once (no request waits on a dead Redis) and use this
instance's own buckets, or are refused with `fail_closed`. A background task pings with backoff and,
when Redis answers, marks it up and logs that once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from .backends.redact import Redactor
from .config.settings import SharedStateSettings

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from .metrics import Metrics

__all__ = ["SharedState", "open_shared_state"]

log = logging.getLogger("ollamux")

RECONNECT_FIRST = 0.25  # seconds before the first ping after a failure; doubles up to RECONNECT_MAX
RECONNECT_MAX = 5.0


def _failures() -> tuple[type[BaseException], ...]:
    """What counts as "Redis is unreachable": redis-py's errors (connection, timeout, READONLY, auth),
    socket errors, and our own deadline."""
    from redis.exceptions import RedisError

    return (RedisError, OSError, TimeoutError)


class SharedState:
    """The app's Redis client and its health; `up` is read on every limited request (a plain attribute)."""

    def __init__(self, settings: SharedStateSettings) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:  # pragma: no cover - the redis extra is installed wherever this is tested
            raise RuntimeError("shared_state needs the redis package: pip install 'ollamux[redis]'") from None
        self.settings = settings
        self.timeout = settings.timeout
        self.fail_closed = settings.fail_closed
        self.prefix = settings.key_prefix
        self.failures = _failures()
        # a password may appear in whatever a library puts in its messages: mask it (and the URL) there
        self._redact = Redactor([settings.redis_url, *_password_of(settings.redis_url)])
        # one retry on a fresh connection: after a Redis restart each pooled socket is dead once; the
        # deadline (`timeout`) bounds both tries together
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=0,
        )
        self.up = False
        self.since = time.time()
        self.error: str | None = "not connected yet"
        self._reconnect: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()  # sent off the request's way (token charges)
        self._closing = False

    # ------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """One ping; down (with the reconnect task running) when it fails. Never fails the app's start:
        with fail-open the instance serves on local limits meanwhile."""
        try:
            async with asyncio.timeout(self.timeout):
                await self.client.ping()
        except self.failures as exc:
            self.failed(exc)
            return
        self.up, self.error, self.since = True, None, time.time()
        log.info("shared limits: using Redis at %s", self.settings.shown_url)

    def spawn(self, write: Coroutine[Any, Any, None]) -> None:
        """Run a write in the background, held until it ends (close() waits for those still running)."""
        task = asyncio.get_running_loop().create_task(write)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def close(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)  # each is bounded by `timeout`
        self._closing = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        with contextlib.suppress(Exception):
            await self.client.aclose()

    # ------------------------------------------------------------------------------------ health
    def failed(self, exc: BaseException) -> None:
        """A command failed: use local limits (or refuse) from now on, until a ping answers again."""
        if self._closing:
            return
        self.error = self.describe(exc)
        if self.up or self._reconnect is None:
            then = "refusing rate-limited requests (503)" if self.fail_closed else "using this instance's local limits"
            log.warning(
                "shared limits: Redis at %s is unreachable (%s); %s until it answers again",
                self.settings.shown_url,
                self.error,
                then,
            )
            self.since = time.time()
        self.up = False
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        delay = RECONNECT_FIRST
        while True:
            await asyncio.sleep(delay / 2 + random.random() * delay / 2)  # jitter: instances do not stampede
            try:
                async with asyncio.timeout(self.timeout):
                    await self.client.ping()
            except self.failures as exc:
                self.error = self.describe(exc)
                delay = min(RECONNECT_MAX, delay * 2)
                continue
            self.up, self.error, self.since = True, None, time.time()
            log.warning("shared limits: Redis at %s answers again; limits are shared again", self.settings.shown_url)
            return

    def describe(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError) and not str(exc):
            return f"no answer within {self.timeout:g} s (shared_state.timeout)"
        text = " ".join(str(exc).split()) or type(exc).__name__
        return self._redact.text(f"{type(exc).__name__}: {text}"[:300])

    def status(self) -> dict[str, Any]:
        """For /health/ready: never the password (shown_url is masked)."""
        return {
            "state": "shared" if self.up else "degraded",
            "using": "shared limits"
            if self.up
            else ("refusing limited requests" if self.fail_closed else "local limits"),
            "redis": self.settings.shown_url,
            "fail_closed": self.fail_closed,
            "since": round(self.since, 3),
            **({"error": self.error} if not self.up and self.error else {}),
        }

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("ollamux_shared_state_up", "1 while the shared limit store (Redis) answers")
        g.add_metric((), 1.0 if self.up else 0.0)
        yield g


def _password_of(url: str) -> list[str]:
    from urllib.parse import unquote, urlsplit

    try:
        pw = urlsplit(url).password
    except ValueError:
        return []
    return [pw, unquote(pw)] if pw else []


async def open_shared_state(settings: SharedStateSettings, metrics: Metrics | None) -> SharedState:
    """Build the app's SharedState and ping once (down is fine: it reconnects in the background)."""
    shared = SharedState(settings)
    if metrics is not None:
        metrics.add_collector(shared.collect)
    await shared.start()
    return shared
