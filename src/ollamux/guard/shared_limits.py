"""Rate limits shared by many instances: the token buckets of ratelimit.py, kept in Redis.

The same buckets, the same arithmetic, executed atomically by two Lua scripts (one round trip for the check
before a request, one for the token charge after it). A bucket is a hash {level, stamp} that expires once it
would be full again: a missing bucket is a full one, as a caller seen for the first time locally.

Time comes from Redis (`TIME` inside the script) unless the caller passes one: the instances' clocks differ
a little, and a bucket refilled by two clocks would gain or lose what they differ by; the server's clock is
one clock for all. Tests pass the time to compare the arithmetic step by step with the local Bucket.

Floats cross the wire as text that reads back to the same double (Python's repr, Lua's %.17g), so the
levels stored in Redis are exactly those a local Bucket would hold after the same steps.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..errors import ServiceUnavailable
from .ratelimit import RateLimiter, bucket_shape, per_minute_text, refusal

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from ..shared_state import SharedState

__all__ = ["BucketScripts", "SharedLimiter"]

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
# token rate/s, token capacity ('' rates: that bucket is not limited). RateLimiter.admit, step for step.
ADMIT = (
    _COMMON
    + """
local trate, tcap = tonumber(ARGV[4]), tonumber(ARGV[5])
if trate then
  local level, stamp = load(KEYS[2], trate, tcap)
  save(KEYS[2], level, stamp, trate, tcap)
  if not (level > 0) then return {'tokens', fmt((-level) / trate + 0.001)} end
end
local rrate, rcap = tonumber(ARGV[2]), tonumber(ARGV[3])
if rrate then
  local level, stamp = load(KEYS[1], rrate, rcap)
  if level >= 1 then
    save(KEYS[1], level - 1, stamp, rrate, rcap)
    return {'', '0'}
  end
  save(KEYS[1], level, stamp, rrate, rcap)
  return {'requests', fmt((1 - level) / rrate)}
end
return {'', '0'}
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


class BucketScripts:
    """The two scripts on one Redis client (EVALSHA, loaded again by redis-py when Redis lost them)."""

    def __init__(self, shared: SharedState) -> None:
        self._admit: AsyncScript = shared.client.register_script(ADMIT)
        self._charge: AsyncScript = shared.client.register_script(CHARGE)

    async def admit(
        self, keys: tuple[str, str], requests: Shape | None, tokens: Shape | None, now: float | None = None
    ) -> tuple[str, float]:
        """("", 0) when admitted, else which bucket refused ("requests" or "tokens") and the seconds to wait."""
        args = [
            _num(now),
            _num(requests[0] if requests else None),
            _num(requests[1] if requests else None),
            _num(tokens[0] if tokens else None),
            _num(tokens[1] if tokens else None),
        ]
        kind, wait = await self._admit(keys=list(keys), args=args)
        return _text(kind), float(_text(wait))

    async def charge(self, key: str, tokens: Shape, cost: float, now: float | None = None) -> None:
        await self._charge(keys=[key], args=[_num(now), repr(tokens[0]), repr(tokens[1]), repr(float(cost))])


class SharedLimiter:
    """RateLimiter's admit and charge, in Redis while it answers, else on the local RateLimiter."""

    def __init__(self, local: RateLimiter, shared: SharedState) -> None:
        self.local = local
        self.shared = shared
        self.scripts = BucketScripts(shared)

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
            try:
                async with asyncio.timeout(shared.timeout):
                    kind, wait = await self.scripts.admit(self._keys(caller), requests, tokens)
            except shared.failures as exc:
                shared.failed(exc)
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
        """Charge after a request (an observer's call, synchronous): sent to Redis off the request's way."""
        if tokens <= 0:
            return
        if not self.shared.up:
            self.local.charge_tokens(caller, tokens)
            return
        _, tpm, _, token_burst = self.local.per_caller.get(caller, self.local.defaults)
        if tpm is not None:
            self.shared.spawn(self._charge(caller, bucket_shape(tpm, token_burst), tokens))

    async def _charge(self, caller: str, shape: Shape, tokens: int) -> None:
        shared = self.shared
        try:
            async with asyncio.timeout(shared.timeout):
                await self.scripts.charge(self._keys(caller)[1], shape, tokens)
        except shared.failures as exc:
            shared.failed(exc)
            self.local.charge_tokens(caller, tokens)
