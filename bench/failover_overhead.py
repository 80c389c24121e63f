"""What open_upstream (retries, replicas, breaker, fallbacks) adds per request on the healthy path.

The backend's `request()` is overridden to do no I/O, so only the wrapper is timed:
    /work/venv/bin/python bench/failover_overhead.py
Measured on the 2-core dev box: a bare lease + request ~0.6-3 us, through open_upstream ~2-5 us: ~1.5-2 us added.
It also times `pick()` on a healthy single replica (the suite once asserted < 5 us there; a timing belongs here).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ollamux.backends.failover import open_upstream
from ollamux.backends.http import HTTPBackend
from ollamux.config import parse_settings
from ollamux.registry import Registry, Route
from ollamux.state import AppState


class _Answer:
    status = 200
    url = "u"

    def release(self) -> None:
        pass


class _NoIO(HTTPBackend):
    async def request(self, *a: Any, **kw: Any) -> Any:  # same replica pick, no socket
        kw.get("replica") or self.pick()
        return _Answer()


def _payload(route: Route, backend: HTTPBackend) -> tuple[str, bytes]:
    return "/x", b"{}"


async def main(n: int = 100_000) -> None:
    s = parse_settings({"backends": {"up": {"url": "http://x/v1"}}, "models": {"m": {"backend": "up"}}}, {})
    b = _NoIO(s.backends["up"], None)  # type: ignore[arg-type]
    state = AppState(settings=s, registry=Registry(s.models), client=None, backends={"up": b})  # type: ignore[arg-type]
    route = state.registry.resolve("m")
    for _ in range(2):  # the first round warms up
        t0 = time.perf_counter()
        for _ in range(n):
            async with b.lease(route) as lease:
                resp = await lease.http.request("POST", "/x", b"{}")
                resp.release()
        direct = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n):
            async with open_upstream(state, route, _payload):
                pass
        wrapped = (time.perf_counter() - t0) / n
    added = (wrapped - direct) * 1e6
    print(f"direct {direct * 1e6:.2f} us, open_upstream {wrapped * 1e6:.2f} us, added {added:.2f} us")
    t0 = time.perf_counter()
    for _ in range(n):
        b.pick()
    per_pick = (time.perf_counter() - t0) / n * 1e6
    verdict = "met" if per_pick < 5 else "NOT met"
    print(f"pick() on a healthy single replica: {per_pick:.2f} us (target < 5 us): {verdict}")


if __name__ == "__main__":
    asyncio.run(main())
