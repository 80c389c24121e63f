"""The Redis that many instances share (`shared_state`): its client and the hot path's own connections
(`call_many`), whether it answers, and the way back when it does not.

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
instance's own buckets, or are refused with `fail_closed`. A background task probes it with backoff
(PROBE_SCRIPT) and, when Redis takes the probe's write, marks it up and logs that once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from .backends.redact import Redactor
from .config.settings import SharedStateSettings

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.asyncio.connection import AbstractConnection

    from .metrics import Metrics

__all__ = ["SharedState", "open_shared_state"]

log = logging.getLogger("ollamux")

RECONNECT_FIRST = 0.25  # seconds before the first probe after a failure; doubles up to RECONNECT_MAX
RECONNECT_MAX = 5.0
IDLE_KEPT = 128  # connections kept open between commands: one per check in flight at once, as redis-py's pool
# The health probe does what every limited request does, a script that writes a key under the prefix, not a
# PING: a read-only replica (a failover that left the URL on one), a user whose ACL forbids scripts or the
# prefix, answer PING and refuse every check, so a PING probe would mark them up and down again forever.
PROBE_SCRIPT = "redis.call('SET', KEYS[1], '1', 'PX', 60000) return 1"

Command = Sequence[str | bytes]


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
            from redis.exceptions import ConnectionError as RedisConnectionError
            from redis.exceptions import ResponseError
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
        # the hot path's connections (`call`): made from the client's settings (TLS, password, database),
        # but with no socket timeout of their own, since the caller's deadline bounds the whole call
        pool = self.client.connection_pool
        self._connection_kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._connection_class = pool.connection_class
        self._idle: list[AbstractConnection] = []
        self._dead = (RedisConnectionError, OSError)  # what a kept connection that Redis closed raises
        self._reply_error = ResponseError
        self.flushers: list[Callable[[], None]] = []  # run by close() first: they send what waits in memory
        self.up = False
        self.since = time.time()
        self.error: str | None = "not connected yet"
        self._reconnect: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()  # sent off the request's way (token charges)
        self._closing = False

    # ------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """One probe; down (with the reconnect task running) when it fails. Never fails the app's start:
        with fail-open the instance serves on local limits meanwhile."""
        try:
            await self._probe()
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
        for flush in self.flushers:
            flush()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)  # each is bounded by `timeout`
        self._closing = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.disconnect()
        with contextlib.suppress(Exception):
            await self.client.aclose()

    # ------------------------------------------------------------------------------------ commands
    async def call(self, command: Command) -> Any:
        """One command and its reply; see `call_many`."""
        return (await self.call_many([command]))[0]

    async def call_many(self, commands: Sequence[Command]) -> list[Any]:
        """Commands sent in one write, their replies read in order; a reply that is an error (NOSCRIPT)
        comes back as the ResponseError in its place, the others still read.

        Why not `client.execute_command`: per command, redis-py's pool checks a connection out and in, its
        retry wrapper, socket-timeout wrappers on the write and on the read, and event and metrics hooks
        cost ~110 us of CPU, ~4x the round trip itself. Here a connection is taken off a plain list and put
        back, with no timeout object: the caller's deadline (one `asyncio.timeout`) bounds the call, and a
        connection that call abandons half way (a deadline, a cancel) is closed, never reused. A kept
        connection that turns out dead (Redis restarted meanwhile) is tried once more on a fresh one, as
        the client's `Retry(1)` does."""
        conn = self._idle.pop() if self._idle else None
        fresh = conn is None
        if conn is None:
            conn = self._connection_class(**self._connection_kwargs)
        packed = _pack(commands)
        while True:
            replies: list[Any] = []
            try:
                await conn.send_packed_command(packed, check_health=False)
                for _ in commands:
                    try:
                        replies.append(await conn.read_response())
                    except self._reply_error as exc:  # read in full: the connection is still in step
                        replies.append(exc)
            except self._dead:
                await conn.disconnect(nowait=True)
                if fresh:
                    raise
                conn, fresh = self._connection_class(**self._connection_kwargs), True
                continue
            except BaseException:
                await conn.disconnect(nowait=True)  # a reply may still be on its way: never reuse it
                raise
            if len(self._idle) < IDLE_KEPT and not self._closing:
                self._idle.append(conn)
            else:
                await conn.disconnect()
            return replies

    # ------------------------------------------------------------------------------------ health
    def failed(self, exc: BaseException) -> None:
        """A command failed: use local limits (or refuse) from now on, until a probe succeeds again."""
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
                await self._probe()
            except self.failures as exc:
                self.error = self.describe(exc)
                delay = min(RECONNECT_MAX, delay * 2)
                continue
            self.up, self.error, self.since = True, None, time.time()
            log.warning("shared limits: Redis at %s answers again; limits are shared again", self.settings.shown_url)
            return

    async def _probe(self) -> None:
        """Is Redis usable, as the hot path uses it (PROBE_SCRIPT); raises one of `failures` when not."""
        async with asyncio.timeout(self.timeout):
            # on the hot path's own connections (`call`): the ones every check then uses
            reply = await self.call(["EVAL", PROBE_SCRIPT, "1", f"{self.prefix}probe"])
        if isinstance(reply, Exception):
            raise reply  # READONLY, NOPERM, NOSCRIPT-less servers: a reply that is an error

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


def _pack(commands: Sequence[Command]) -> bytes:
    """RESP arrays of bulk strings (what redis-py's pack_commands makes, without its per-argument checks)."""
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = arg.encode() if isinstance(arg, str) else arg
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _password_of(url: str) -> list[str]:
    from urllib.parse import unquote, urlsplit

    try:
        pw = urlsplit(url).password
    except ValueError:
        return []
    return [pw, unquote(pw)] if pw else []


async def open_shared_state(settings: SharedStateSettings, metrics: Metrics | None) -> SharedState:
    """Build the app's SharedState and probe it once (down is fine: it reconnects in the background)."""
    shared = SharedState(settings)
    if metrics is not None:
        metrics.add_collector(shared.collect)
    await shared.start()
    return shared
