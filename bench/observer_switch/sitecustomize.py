"""The switch of the bench's in-place log-cost phase (`Bench.log_cost_in_place` in bench/bench.py).

Python imports `sitecustomize` from the path at start-up, so this file runs in an ollamux server only when the
bench puts this folder on its PYTHONPATH. Each SIGUSR2 then detaches the request log and the metrics from
every `Observers` of the process, or attaches them again, and writes "on" or "off" (what is now in force) to
the file $OLLAMUX_BENCH_SWITCH_FILE names. Detached, no record reaches them: the feeder thread and the writer
process idle, and a request costs what it costs with both turned off in the configuration. The same process
measured both ways is the point: two processes differ here by up to ~10% for their whole life.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import ollamux.observe as _observe

_DETACHED = ("RequestLog", "Metrics")  # the observers the configuration's request_log and metrics switch
_every: list[Any] = []  # every Observers made in this process
_held: dict[int, list[Any]] = {}  # id of an Observers: its full list while the two are detached
_init = _observe.Observers.__init__


def _track(self: Any, *args: Any, **kwargs: Any) -> None:
    _init(self, *args, **kwargs)
    _every.append(self)


def _switch(_signum: int, _frame: Any) -> None:
    state = "on"
    for obs in _every:
        full = _held.pop(id(obs), None)
        if full is not None:
            obs.observers = full
        else:
            _held[id(obs)] = obs.observers
            obs.observers = [o for o in obs.observers if type(o).__name__ not in _DETACHED]
            state = "off"
    with open(os.environ["OLLAMUX_BENCH_SWITCH_FILE"], "w", encoding="utf-8") as f:
        f.write(state)


_observe.Observers.__init__ = _track  # type: ignore[method-assign]
signal.signal(signal.SIGUSR2, _switch)
