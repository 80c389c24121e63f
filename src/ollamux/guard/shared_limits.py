"""Rate limits shared by many instances: the token buckets of ratelimit.py, kept in Redis.

The same buckets, the same arithmetic, executed atomically by two Lua scripts: the check before a request,
and the token charge after it. A bucket is a hash {level, stamp} that expires once it would be full again: a
missing bucket is a full one, as a caller seen for the first time locally.

One round trip per request, not two: a request's token charge waits in memory up to CHARGE_DELAY. When the
same caller's next request comes first (the usual case for a busy caller), the charge rides in that
request's check (ADMIT takes it off the token bucket before it looks at the level: the debt is counted
before the next request, as the local limiter does); otherwise the charges of every caller go out together
after CHARGE_DELAY, pipelined in one write. Another instance so sees a debt at most CHARGE_DELAY plus one
round trip after the answer that made it.

Time comes from Redis (`TIME` inside the script) unless the caller passes one: the instances' clocks differ
a little, and a bucket refilled by two clocks would gain or lose what they differ by; the server's clock is
one clock for all. Tests pass the time to compare the arithmetic step by step with the local Bucket.

Floats cross the wire as text that reads back to the same double (Python's repr, Lua's %.17g), so the
levels stored in Redis are exactly those a local Bucket would hold after the same steps.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING, Any

from ..errors import ServiceUnavailable
from .ratelimit import RateLimiter, bucket_shape, per_minute_text, refusal

if TYPE_CHECKING:
    from ..shared_state import SharedState

__all__ = ["CHARGE_DELAY", "BucketScripts", "SharedLimiter"]

CHARGE_DELAY = 0.005  # seconds a token charge may wait for its caller's next check before it goes alone

_COMMON = """
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.17g', x) end
-- Bucket._refill: a missing bucket is full; time that goes back refills nothing
local function load(key, rate, cap)
  local v = redis.call('HMGET', key, 'level', 'stamp')
  local level, stamp = tonumber(v[1]), tonumber(v[2])
  if level == nil or stamp == nil then return cap, now end
  if now > stamp then
    level = math.min(cap, level + (now - stamp) * rate)
    stamp = now
  end
  return level, stamp
end
-- kept until it would be full again (then it is the same as missing), plus a second
local function save(key, level, stamp, rate, cap)
  redis.call('HSET', key, 'level', fmt(level), 'stamp', fmt(stamp))
  redis.call('PEXPIRE', key, math.ceil((cap - level) / rate * 1000) + 1000)
end
"""

# KEYS: request bucket, token bucket. ARGV: now ('' = Redis TIME), request rate/s, request capacity,
# token rate/s, token capacity ('' rates: that bucket is not limited), a token charge to take first ('' =
# none; the same levels as CHARGE then ADMIT at one time). RateLimiter.admit, step for step. The answer is one
# string ('' admitted, else the bucket that refused and the seconds to wait): one bulk reply reads fastest.
ADMIT = (
    _COMMON
    + """
local trate, tcap = tonumber(ARGV[4]), tonumber(ARGV[5])
if trate then
  local level, stamp = load(KEYS[2], trate, tcap)
  local cost = tonumber(ARGV[6])
  if cost then level = level - cost end
  save(KEYS[2], level, stamp, trate, tcap)
  if not (level > 0) then return 'tokens ' .. fmt((-level) / trate + 0.001) end
end
local rrate, rcap = tonumber(ARGV[2]), tonumber(ARGV[3])
if rrate then
  local level, stamp = load(KEYS[1], rrate, rcap)
  if level >= 1 then
    save(KEYS[1], level - 1, stamp, rrate, rcap)
    return ''
  end
  save(KEYS[1], level, stamp, rrate, rcap)
  return 'requests ' .. fmt((1 - level) / rrate)
end
return ''
"""
)

# KEYS: token bucket. ARGV: now, token rate/s, token capacity, cost. Bucket.charge: may go into debt.
CHARGE = (
    _COMMON
    + """
local rate, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
local level, stamp = load(KEYS[1], rate, cap)
save(KEYS[1], level - tonumber(ARGV[4]), stamp, rate, cap)
return 1
"""
)

Shape = tuple[float, float]  # (refill per second, capacity)


def _num(v: float | None) -> str:
    return "" if v is None else repr(v)


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class _Script:
    """EVALSHA, and EVAL (which loads it again) when Redis lost it (a restart, SCRIPT FLUSH)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def command(self, keys: list[str], args: list[str]) -> list[str | bytes]:
        return ["EVALSHA", self.sha, str(len(keys)), *keys, *args]

    def reloading(self, command: list[str | bytes]) -> list[str | bytes]:
        return ["EVAL", self.source, *command[2:]]


class BucketScripts:
    """The two scripts, on SharedState's own connections (`call_many`)."""

    def __init__(self, shared: SharedState) -> None:
        from redis.exceptions import NoScriptError

        self._lost = NoScriptError
        self.shared = shared
        self._admit = _Script(ADMIT)
        self._charge = _Script(CHARGE)

    async def _run(self, script: _Script, commands: list[list[str | bytes]]) -> list[Any]:
        replies = await self.shared.call_many(commands)
        lost = [i for i, reply in enumerate(replies) if isinstance(reply, self._lost)]
        if lost:
            again = await self.shared.call_many([script.reloading(commands[i]) for i in lost])
            for i, reply in zip(lost, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply  # READONLY, a script error: a failure of the shared store
        return replies

    async def admit(
        self,
        keys: tuple[str, str],
        requests: Shape | None,
        tokens: Shape | None,
        now: float | None = None,
        charge: float | None = None,
    ) -> tuple[str, float]:
        """("", 0) when admitted, else which bucket refused ("requests" or "tokens") and the seconds to wait.
        `charge`: tokens of an earlier request taken off the token bucket first (with `tokens` only)."""
        args = [
            _num(now),
            _num(requests[0] if requests else None),
            _num(requests[1] if requests else None),
            _num(tokens[0] if tokens else None),
            _num(tokens[1] if tokens else None),
            _num(None if charge is None else float(charge)),
        ]
        (reply,) = await self._run(self._admit, [self._admit.command(list(keys), args)])
        kind, _, wait = _text(reply).partition(" ")
        return kind, float(wait) if wait else 0.0

    async def charge(self, key: str, tokens: Shape, cost: float, now: float | None = None) -> None:
        await self.charge_many([(key, tokens, cost)], now)

    async def charge_many(self, charges: list[tuple[str, Shape, float]], now: float | None = None) -> None:
        """Several token charges (key, shape, cost), one script each, sent in one write."""
        commands = [
            self._charge.command([key], [_num(now), repr(shape[0]), repr(shape[1]), repr(float(cost))])
            for key, shape, cost in charges
        ]
        await self._run(self._charge, commands)


class SharedLimiter:
    """RateLimiter's admit and charge, in Redis while it answers, else on the local RateLimiter."""

    def __init__(self, local: RateLimiter, shared: SharedState) -> None:
        self.local = local
        self.shared = shared
        self.scripts = BucketScripts(shared)
        self._pending: dict[str, int] = {}  # caller -> tokens charged here, not yet sent (CHARGE_DELAY)
        self._timer: asyncio.TimerHandle | None = None
        shared.flushers.append(self.flush)

    def _keys(self, caller: str) -> tuple[str, str]:
        # one hash tag per caller: both buckets sit in one Redis Cluster slot, as a script needs
        base = f"{self.shared.prefix}rl:{{{caller}}}"
        return f"{base}:requests", f"{base}:tokens"

    async def admit(self, caller: str, label: str) -> None:
        """Count one request; RateLimited (429) over either limit, ServiceUnavailable (503) when Redis is
        unreachable and shared_state.fail_closed is on."""
        rpm, tpm, burst, token_burst = self.local.per_caller.get(caller, self.local.defaults)
        if rpm is None and tpm is None:
            return
        shared = self.shared
        if shared.up:
            requests = bucket_shape(rpm, burst) if rpm is not None else None
            tokens = bucket_shape(tpm, token_burst) if tpm is not None else None
            owed = self._pending.pop(caller, None) if tokens is not None else None
            if owed is not None and not self._pending and self._timer is not None:
                # nothing else waits: a timer left armed would send the next request's charge on its own
                self._timer.cancel()
                self._timer = None
            try:
                async with asyncio.timeout(shared.timeout):
                    kind, wait = await self.scripts.admit(self._keys(caller), requests, tokens, charge=owed)
            except shared.failures as exc:
                shared.failed(exc)
                if owed is not None:
                    self.local.charge_tokens(caller, owed)
            else:
                if kind == "tokens" and tokens is not None:
                    raise refusal(label, f"{per_minute_text(tokens[0] * 60.0)} tokens", wait)
                if kind == "requests" and requests is not None:
                    raise refusal(label, f"{per_minute_text(requests[0] * 60.0)} requests", wait)
                return
        if shared.fail_closed:
            raise ServiceUnavailable(
                "the shared rate-limit store is unreachable and this server refuses requests it cannot count "
                "(shared_state.fail_closed); try again shortly",
                code="shared_state_unavailable",
                headers={"Retry-After": "1"},
            )
        self.local.admit(caller, label)

    def charge_tokens(self, caller: str, tokens: int) -> None:
        """Charge after a request (an observer's call, synchronous): kept for the caller's next check, or
        sent with the others after CHARGE_DELAY, off the request's way."""
        if tokens <= 0:
            return
        if not self.shared.up:
            self.local.charge_tokens(caller, tokens)
            return
        if self.local.per_caller.get(caller, self.local.defaults)[1] is None:
            return  # no token limit for this caller
        self._pending[caller] = self._pending.get(caller, 0) + tokens
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(CHARGE_DELAY, self.flush)

    def flush(self) -> None:
        """Send every charge still waiting (the timer's call, and SharedState.close's)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        if not self.shared.up:
            for caller, tokens in pending.items():
                self.local.charge_tokens(caller, tokens)
            return
        charges: list[tuple[str, str, Shape, int]] = []
        for caller, tokens in pending.items():
            _, tpm, _, token_burst = self.local.per_caller.get(caller, self.local.defaults)
            if tpm is not None:  # a reload may have lifted the limit meanwhile
                charges.append((caller, self._keys(caller)[1], bucket_shape(tpm, token_burst), tokens))
        if charges:
            self.shared.spawn(self._charge(charges))

    async def _charge(self, charges: list[tuple[str, str, Shape, int]]) -> None:
        shared = self.shared
        try:
            async with asyncio.timeout(shared.timeout):
                await self.scripts.charge_many([(key, shape, tokens) for _, key, shape, tokens in charges])
        except shared.failures as exc:
            shared.failed(exc)
            for caller, _, _, tokens in charges:
                self.local.charge_tokens(caller, tokens)
