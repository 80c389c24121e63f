"""The Lua token buckets in a real Redis against the local Bucket: the same steps give the same levels,
the same refusals and the same waits, to the last bit of the float."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from ollamux.config import ConfigError, parse_settings
from ollamux.config.settings import SharedStateSettings
from ollamux.errors import RateLimited
from ollamux.guard.ratelimit import Bucket, RateLimiter, bucket_shape
from ollamux.guard.shared_limits import BucketScripts, SharedLimiter
from ollamux.shared_state import SharedState

from .redis_server import RedisServer, redis_server


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path)


# (time, what, cost): "admit" is one request (token debt checked, then one request taken), "charge" spends
# tokens after a request. Limits: (requests per minute, burst, tokens per minute, token burst).
Step = tuple[float, str, int]
CASES: dict[str, tuple[tuple[float | None, int | None, float | None, int | None], list[Step]]] = {
    "burst then refill": (
        (60.0, 3, None, None),
        [(t, "admit", 0) for t in (0.0, 0.1, 0.2, 0.3, 0.9, 1.25, 1.3, 10.0, 10.0, 10.0)],
    ),
    "no burst given: capacity is the rate": (
        (2.5, None, None, None),
        [(0.0, "admit", 0), (0.0, "admit", 0), (0.0, "admit", 0), (7.0, "admit", 0), (31.0, "admit", 0)],
    ),
    "token debt, paid back": (
        (None, None, 600.0, 20),
        [
            (0.0, "admit", 0),
            (0.1, "charge", 14),
            (0.2, "admit", 0),
            (0.3, "charge", 14),
            (0.4, "admit", 0),
            (0.5, "admit", 0),
            (1.3, "admit", 0),
            (1.4, "charge", 1000),
            (2.0, "admit", 0),
            (120.0, "admit", 0),
        ],
    ),
    "both limits, odd rates": (
        (7.3, 2, 333.3, 50),
        [
            (0.0, "admit", 0),
            (0.01, "charge", 49),
            (0.02, "admit", 0),
            (0.03, "charge", 3),
            (0.04, "admit", 0),
            (9.0, "admit", 0),
            (9.5, "charge", 7),
            (17.123456, "admit", 0),
            (17.2, "admit", 0),
            (60.0, "admit", 0),
        ],
    ),
    "time that goes back refills nothing": (
        (60.0, 2, None, None),
        [(5.0, "admit", 0), (5.0, "admit", 0), (4.0, "admit", 0), (5.5, "admit", 0), (6.0, "admit", 0)],
    ),
}


def _local_outcome(limiter: RateLimiter, step: Step) -> tuple[str, float]:
    _, what, cost = step
    if what == "charge":
        limiter.charge_tokens("key:k", cost)
        return "", 0.0
    try:
        limiter.admit("key:k", "key 'k'")
    except RateLimited as exc:
        kind = "tokens" if " tokens per minute" in exc.message else "requests"
        return kind, _wait_of(exc)
    return "", 0.0


def _wait_of(exc: RateLimited) -> float:
    return float(exc.headers["Retry-After"])


def _level(raw: Mapping[Any, Any], b: Bucket | None) -> float | None:
    if b is None:
        return None
    return float(raw[b"level"]) if raw else b.capacity


@pytest.mark.parametrize("case", sorted(CASES))
def test_lua_bucket_matches_local_bucket(redis: RedisServer, case: str) -> None:
    (rpm, burst, tpm, token_burst), steps = CASES[case]
    now = [steps[0][0]]
    local = RateLimiter((rpm, tpm, burst, token_burst), clock=lambda: now[0])
    requests = bucket_shape(rpm, burst) if rpm is not None else None
    tokens = bucket_shape(tpm, token_burst) if tpm is not None else None
    keys = ("t:requests", "t:tokens")

    async def run() -> list[tuple[object, ...]]:
        shared = SharedState(SharedStateSettings(redis_url=redis.url, shown_url=redis.url))
        await shared.start()
        scripts = BucketScripts(shared)
        seen: list[tuple[object, ...]] = []
        try:
            for step in steps:
                now[0] = step[0]
                lo_kind, lo_wait = _local_outcome(local, step)
                if step[1] == "charge":
                    assert tokens is not None
                    await scripts.charge(keys[1], tokens, step[2], now=step[0])
                    re_kind, re_wait = "", 0.0
                else:
                    re_kind, re_wait = await scripts.admit(keys, requests, tokens, now=step[0])
                rates = local._for("key:k", step[0])
                raw_r = await shared.client.hgetall(keys[0])
                raw_t = await shared.client.hgetall(keys[1])
                # the local limiter reports whole seconds (Retry-After); the script its exact wait
                re_rounded = float(max(1, -(-re_wait // 1))) if re_kind else 0.0
                seen.append((step, lo_kind, re_kind, lo_wait, re_rounded))
                assert (lo_kind, lo_wait) == (re_kind, re_rounded), step
                # the exact wait, computed from the local bucket the same way the script does
                if re_kind == "requests":
                    assert rates.requests is not None
                    assert re_wait == (1.0 - rates.requests.level) / rates.requests.rate
                if re_kind == "tokens":
                    assert rates.tokens is not None
                    assert re_wait == (-rates.tokens.level) / rates.tokens.rate + 1e-3
                # the stored level is bit for bit the local one (a missing bucket is a full one)
                if raw_r or step[1] == "admit":
                    assert _level(raw_r, rates.requests) == (rates.requests.level if rates.requests else None)
                if raw_t:
                    assert rates.tokens is not None and float(raw_t[b"level"]) == rates.tokens.level
        finally:
            await shared.close()
        return seen

    seen = asyncio.run(run())
    assert any(s[1] for s in seen) and any(not s[1] for s in seen)  # every case both admits and refuses


def test_redis_clock_is_used_without_a_time(redis: RedisServer) -> None:
    """Production passes no time: the script reads Redis' TIME, one clock for every instance."""

    async def run() -> tuple[list[tuple[str, float]], Mapping[Any, Any]]:
        shared = SharedState(SharedStateSettings(redis_url=redis.url, shown_url=redis.url))
        await shared.start()
        scripts = BucketScripts(shared)
        shape = bucket_shape(1.0, 2)  # 2 at once, then one a minute
        out = [await scripts.admit(("c:r", "c:t"), shape, None) for _ in range(3)]
        raw = await shared.client.hgetall("c:r")
        ttl = await shared.client.pttl("c:r")
        seconds, _ = await shared.client.time()
        await shared.close()
        assert abs(float(raw[b"stamp"]) - seconds) < 5  # Redis' own clock, in seconds
        assert 0 < ttl <= 121_000  # gone once it would be full again
        return out, raw

    out, _ = asyncio.run(run())
    assert [k for k, _ in out] == ["", "", "requests"]
    assert 59 < out[2][1] <= 60


# ------------------------------------------------------------------------- one round trip per request
def test_a_charge_sent_with_the_next_check_gives_the_levels_of_charge_then_check(redis: RedisServer) -> None:
    """The charge a request leaves may ride in its caller's next check: the same levels, the same refusal
    and wait as the charge sent on its own first."""
    tokens = bucket_shape(600.0, 20)
    requests = bucket_shape(60.0, 3)
    steps = [(0.0, 0), (0.1, 14), (0.2, 14), (0.3, 0), (5.0, 1000), (200.0, 3)]

    async def run() -> list[tuple[tuple[str, float], tuple[str, float]]]:
        shared = SharedState(SharedStateSettings(redis_url=redis.url, shown_url=redis.url))
        await shared.start()
        scripts = BucketScripts(shared)
        seen: list[tuple[tuple[str, float], tuple[str, float]]] = []
        try:
            for now, owed in steps:
                if owed:
                    await scripts.charge("apart:t", tokens, owed, now=now)
                apart = await scripts.admit(("apart:r", "apart:t"), requests, tokens, now=now)
                folded = await scripts.admit(
                    ("fold:r", "fold:t"), requests, tokens, now=now, charge=owed if owed else None
                )
                assert folded == apart, now
                for bucket in ("r", "t"):
                    assert await shared.client.hgetall(f"fold:{bucket}") == await shared.client.hgetall(
                        f"apart:{bucket}"
                    )
                seen.append((apart, folded))
        finally:
            await shared.close()
        return seen

    seen = asyncio.run(run())
    assert [a[0] for a, _ in seen] == ["", "", "tokens", "tokens", "tokens", ""]  # the debts refuse, then are paid


def _limiter(redis: RedisServer) -> tuple[SharedState, SharedLimiter]:
    shared = SharedState(SharedStateSettings(redis_url=redis.url, shown_url=redis.url))
    local = RateLimiter((None, 1.0, None, 20), {})  # 20 tokens, then one a minute
    return shared, SharedLimiter(local, shared)


def test_a_debt_refuses_the_callers_next_request_at_once(redis: RedisServer) -> None:
    """However the charge travels (with the next check, or on its own), it is counted before that check."""

    async def run() -> None:
        shared, limiter = _limiter(redis)
        await shared.start()
        try:
            await limiter.admit("key:a", "key 'a'")
            limiter.charge_tokens("key:a", 30)  # -> -10
            with pytest.raises(RateLimited) as refused:
                await limiter.admit("key:a", "key 'a'")
            assert " tokens per minute" in refused.value.message and _wait_of(refused.value) > 500
            assert float((await shared.client.hget("ollamux:rl:{key:a}:tokens", "level")) or 0) == -10.0
        finally:
            await shared.close()

    asyncio.run(run())


def test_a_charge_with_no_next_request_still_reaches_redis(redis: RedisServer) -> None:
    """A caller that sends nothing more: its charge goes out on its own (another instance must see the
    debt), and one charged just before shutdown is sent by close()."""

    async def run() -> tuple[float, float]:
        shared, limiter = _limiter(redis)
        await shared.start()
        level: float | None = None
        try:
            limiter.charge_tokens("key:b", 25)
            for _ in range(600):  # polls until it is there (no timing asserted: ~5 ms here, 30 s allowed)
                raw = await shared.client.hget("ollamux:rl:{key:b}:tokens", "level")
                if raw is not None:
                    level = float(raw)
                    break
                await asyncio.sleep(0.05)
            limiter.charge_tokens("key:c", 7)
        finally:
            await shared.close()
        assert level is not None
        again = SharedState(SharedStateSettings(redis_url=redis.url, shown_url=redis.url))
        await again.start()
        try:
            last = await again.client.hget("ollamux:rl:{key:c}:tokens", "level")
        finally:
            await again.close()
        assert last is not None
        return level, float(last)

    assert asyncio.run(run()) == (-5.0, 13.0)


def test_checks_go_on_after_redis_lost_its_scripts_and_restarted(redis: RedisServer) -> None:
    """SCRIPT FLUSH, then a restart: the kept connection is dead and the scripts are gone; the next check
    still answers, on a fresh connection and with the script sent again, without failing."""

    async def run() -> list[tuple[str, float]]:
        shared = SharedState(SharedStateSettings(redis_url=redis.url, shown_url=redis.url))
        await shared.start()
        scripts = BucketScripts(shared)
        shape = bucket_shape(1.0, 2)
        out = [await scripts.admit(("s:r", "s:t"), shape, None)]
        await shared.client.script_flush()
        out.append(await scripts.admit(("s:r", "s:t"), shape, None))
        redis.stop()
        redis.start()  # empty again: a full bucket
        out += [await scripts.admit(("s:r", "s:t"), shape, None) for _ in range(3)]
        await scripts.charge("s:t", bucket_shape(60.0, 10), 4)
        assert float(await shared.client.hget("s:t", "level") or 0) == 6.0
        await shared.close()
        return out

    out = asyncio.run(run())
    assert [k for k, _ in out] == ["", "", "", "", "requests"]


# -------------------------------------------------------------------------------------------- config
def test_shared_state_config() -> None:
    s = parse_settings({}, {})
    assert s.shared_state is None
    s = parse_settings(
        {"shared_state": {"redis_url": "rediss://app:${PW}@redis.internal:6380/2", "fail_closed": True}},
        {"PW": "s3cret-pass"},
    )
    ss = s.shared_state
    assert ss is not None and ss.fail_closed and ss.timeout == 0.25 and ss.key_prefix == "ollamux:"
    assert ss.redis_url == "rediss://app:s3cret-pass@redis.internal:6380/2"
    assert ss.shown_url == "rediss://app:***@redis.internal:6380/2"
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize(
    ("section", "key", "words"),
    [
        ({"redis_url": "http://:hunter2-pw@h:1/0"}, "shared_state.redis_url", "redis:// or rediss://"),
        ({"redis_url": "redis://:hunter2-pw@h:99999/0"}, "shared_state.redis_url", "port"),
        ({"redis_url": "redis://:hunter2-pw@h:6379/zero"}, "shared_state.redis_url", "database number"),
        ({"redis_url": "redis://:hunter2-pw@/0"}, "shared_state.redis_url", "names no host"),
        ({"redis_url": "redis://h:6379/0?socket_timeout=9"}, "shared_state.redis_url", "not supported"),
        ({"redis_url": "redis://h/0", "fail_open": True}, "shared_state.fail_open", "unknown key"),
        ({"redis_url": "redis://h/0", "timeout": 0}, "shared_state.timeout", "at least"),
        ({"fail_closed": True}, "shared_state.redis_url", "required"),
    ],
)
def test_shared_state_config_errors(section: dict[str, object], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({"shared_state": section}, {})
    assert err.value.key == key and words in err.value.message
    assert "hunter2" not in str(err.value)  # the password never reaches a message
