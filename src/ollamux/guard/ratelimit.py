"""Rate limits (requests and tokens per minute, per key or client address) and concurrency gates.

Both rates are token buckets: `burst` requests may come at once, then the bucket refills at the
per-minute rate. Tokens are only known after a request, so the token bucket is charged afterwards and
may go into debt; a caller in debt is refused until it has paid it back. Retry-After says when.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

from ..config import ConcurrencyLimit
from ..errors import RateLimited, ServiceUnavailable

__all__ = ["Bucket", "Gate", "RateLimiter", "Rates", "bucket_shape", "per_minute_text", "refusal"]

Clock = Callable[[], float]


def bucket_shape(per_minute: float, burst: int | None) -> tuple[float, float]:
    """(refill per second, capacity): one formula for the local buckets and the shared ones in Redis."""
    return per_minute / 60.0, float(burst if burst is not None else max(1.0, per_minute))


class Bucket:
    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, per_minute: float, burst: int | None, now: float) -> None:
        self.rate, self.capacity = bucket_shape(per_minute, burst)  # refill per second, most it holds
        self.level = self.capacity
        self.stamp = now

    def _refill(self, now: float) -> None:
        # a clock that went back (the shared buckets' callers) refills nothing, and later not twice
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, cost: float, now: float) -> float:
        """Take `cost` if there is enough; else return the seconds until there will be (0 means taken)."""
        self._refill(now)
        if self.level >= cost:
            self.level -= cost
            return 0.0
        return (cost - self.level) / self.rate

    def in_debt(self, now: float) -> float:
        """Seconds until the level is positive again (0 means it is)."""
        self._refill(now)
        return 0.0 if self.level > 0 else (-self.level) / self.rate + 1e-3

    def charge(self, cost: float, now: float) -> None:
        self._refill(now)
        self.level -= cost

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.level >= self.capacity


class Rates:
    """One caller's limits: a request bucket and a token bucket, either may be absent."""

    __slots__ = ("requests", "tokens")

    def __init__(self, requests: Bucket | None, tokens: Bucket | None) -> None:
        self.requests = requests
        self.tokens = tokens


def _retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))  # whole seconds (RFC 9110), never 0: 0 invites a hot loop


class RateLimiter:
    """Buckets per caller ("key:<name>" or "ip:<address>"), created on first sight."""

    # callers by address are unbounded in number; full buckets are dropped once there are this many
    PRUNE_AT = 10_000

    def __init__(
        self,
        defaults: tuple[float | None, float | None, int | None, int | None],
        per_caller: dict[str, tuple[float | None, float | None, int | None, int | None]] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.defaults = defaults
        self.per_caller = per_caller or {}
        self.clock = clock
        self._rates: dict[str, Rates] = {}

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in (self.defaults[0], self.defaults[1])) or any(
            v[0] is not None or v[1] is not None for v in self.per_caller.values()
        )

    @property
    def counts_tokens(self) -> bool:
        return self.defaults[1] is not None or any(v[1] is not None for v in self.per_caller.values())

    def _for(self, caller: str, now: float) -> Rates:
        r = self._rates.get(caller)
        if r is None:
            if len(self._rates) >= self.PRUNE_AT:
                self._prune(now)
            rpm, tpm, burst, token_burst = self.per_caller.get(caller, self.defaults)
            r = Rates(
                Bucket(rpm, burst, now) if rpm is not None else None,
                Bucket(tpm, token_burst, now) if tpm is not None else None,
            )
            self._rates[caller] = r
        return r

    def _prune(self, now: float) -> None:
        for caller, r in list(self._rates.items()):
            if (r.requests is None or r.requests.full(now)) and (r.tokens is None or r.tokens.full(now)):
                del self._rates[caller]

    def admit(self, caller: str, label: str) -> None:
        """Count one request; RateLimited (429, with Retry-After) if over either limit."""
        now = self.clock()
        r = self._for(caller, now)
        if r.tokens is not None:
            wait = r.tokens.in_debt(now)
            if wait:
                raise refusal(label, f"{_per_minute(r.tokens)} tokens", wait)
        if r.requests is not None:
            wait = r.requests.take(1.0, now)
            if wait:
                raise refusal(label, f"{_per_minute(r.requests)} requests", wait)

    def charge_tokens(self, caller: str, tokens: int) -> None:
        if tokens <= 0:
            return
        now = self.clock()
        r = self._for(caller, now)
        if r.tokens is not None:
            r.tokens.charge(float(tokens), now)


def _per_minute(b: Bucket) -> str:
    return per_minute_text(b.rate * 60.0)


def per_minute_text(v: float) -> str:
    return str(int(v)) if v.is_integer() else f"{v:g}"


class Gate:
    """At most `max` requests at once; up to `queue` more wait (FIFO) at most `timeout` seconds; 503 else."""

    def __init__(self, label: str, limit: ConcurrencyLimit) -> None:
        self.label = label
        self.max = limit.max
        self.queue = limit.queue
        self.timeout = limit.timeout
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.active < self.max and not self._waiters:
            self.active += 1
            return
        if len(self._waiters) >= self.queue:
            raise ServiceUnavailable(
                f"{self.label} is busy: {self.active} requests running and {len(self._waiters)} waiting; "
                "try again shortly",
                code="overloaded",
                headers={"Retry-After": "1"},
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(self.timeout):
                await fut
        except (TimeoutError, asyncio.CancelledError) as exc:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we gave up: pass it on
            else:
                fut.cancel()
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            if isinstance(exc, TimeoutError):
                raise ServiceUnavailable(
                    f"{self.label} is busy: no free slot within {self.timeout:g} s; try again shortly",
                    code="overloaded",
                    headers={"Retry-After": "1"},
                ) from None
            raise

    def release(self) -> None:
        # hand the slot straight to the oldest waiter, so a newcomer cannot overtake the queue
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.active -= 1


def refusal(label: str, limit: str, wait: float) -> RateLimited:
    return RateLimited(
        f"rate limit exceeded for {label}: {limit} per minute; retry in {_retry_after(wait)} s",
        code="rate_limit_exceeded",
        headers={"Retry-After": _retry_after(wait)},
    )
