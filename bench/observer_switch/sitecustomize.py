"""The switch of the bench's in-place log-cost phase (`Bench.log_cost_in_place` in bench/bench.py).

Python imports `sitecustomize` from the path at start-up, so this file runs in an ollamux server only when the
bench puts this folder on its PYTHONPATH. It detaches the request log and the metrics from every `Observers`
of the process, or attaches them again: detached, no record reaches them, the feeder thread and the writer
process idle, and a request costs what it costs with both turned off in the configuration. The same process
measured both ways is the point: two processes differ here by up to ~10% for their whole life.

SIGUSR1 starts a sliced run, and the next SIGUSR1 ends it. A thread flips the state every `slice_ms`
milliseconds ("on" first; the run's settings are the JSON object in $OLLAMUX_BENCH_SWITCH_FILE + ".mode",
written before the signal) and reads, for each slice, the requests that finished in it and the event loop
thread's CPU time (`/proc/self/task/<tid>/schedstat`, in ns). The machine's speed here drifts by up to 2x over
seconds (other tenants of the host): slices far shorter than that drift see the same machine on both sides.
What the two observers leave for later (the feeder thread's marshalling, the writer process's inserts) is read
once over the whole run and belongs to the "on" slices' requests. With `"control": true` the thread alternates
the labels but never detaches anything: the A/A control, what the method reads when there is nothing to find.
At the end the run's figures go to $OLLAMUX_BENCH_SWITCH_FILE + ".slices" as JSON, whole (written beside and
renamed: whoever sees the file can read it).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import ollamux.observe as _observe

_DETACHED = ("RequestLog", "Metrics")  # the observers the configuration's request_log and metrics switch
_every: list[Any] = []  # every Observers made in this process
_held: dict[int, list[Any]] = {}  # id of an Observers: its full list while the two are detached
_init = _observe.Observers.__init__
_started = _observe.Observers.started
_finished = _observe.Observers.finished
_begun = [0]  # requests started, in any Observers
_done = [0]  # requests finished, in any Observers (one add a request, the same in both states)


def _track(self: Any, *args: Any, **kwargs: Any) -> None:
    _init(self, *args, **kwargs)
    _every.append(self)


def _begin(self: Any, rec: Any) -> None:
    _begun[0] += 1
    _started(self, rec)


def _count(self: Any, rec: Any) -> None:
    _done[0] += 1
    _finished(self, rec)


def _flip() -> None:
    for obs in _every:
        full = _held.pop(id(obs), None)
        if full is not None:
            obs.observers = full
        else:
            _held[id(obs)] = obs.observers
            obs.observers = [o for o in obs.observers if type(o).__name__ not in _DETACHED]


# ------------------------------------------------------------------------------------------ sliced runs
def _on_cpu_ns(path: str) -> int:
    """The first field of a schedstat file: time on a CPU, in ns."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _helpers_ns(skip: set[int]) -> tuple[int, int]:
    """CPU time of what works for the observers off the event loop: (this process's other threads, the
    request log's feeder among them; its child processes, the log writer)."""
    threads = children = 0
    pid = os.getpid()
    for tid in os.listdir(f"/proc/{pid}/task"):
        if int(tid) not in skip:
            threads += _on_cpu_ns(f"/proc/{pid}/task/{tid}/schedstat")
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                kids = f.read().split()
        except OSError:
            kids = []
        children += sum(_on_cpu_ns(f"/proc/{k}/schedstat") for k in kids)
    return threads, children


class _Sliced(threading.Thread):
    def __init__(self, loop_tid: int) -> None:
        super().__init__(name="bench-slicer", daemon=True)
        self.loop_tid = loop_tid
        with open(os.environ["OLLAMUX_BENCH_SWITCH_FILE"] + ".mode", encoding="utf-8") as f:
            mode = json.load(f)
        self.period = float(mode.get("slice_ms", 200)) / 1000
        self.control = bool(mode.get("control", False))
        self.stop = threading.Event()
        self.slices: list[tuple[str, int, int, int]] = []  # (state, requests, loop CPU ns, wall ns)
        self.stat = f"/proc/{os.getpid()}/task/{loop_tid}/schedstat"
        # read here, in the signal handler on the loop's thread: no request of the run can have finished yet
        # (read in `run`, after the thread's start, the loop may already have finished the run's first one)
        self.first = (_done[0], _on_cpu_ns(self.stat), time.perf_counter_ns())

    def run(self) -> None:
        stat = self.stat
        skip = {self.loop_tid, threading.get_native_id()}  # the loop, measured by slice; this thread
        threads0, children0 = _helpers_ns(skip)
        state = "on"
        n0, c0, w0 = self.first
        while not self.stop.is_set():
            if self.stop.wait(self.period):
                _drain()
            n1, c1, w1 = _done[0], _on_cpu_ns(stat), time.perf_counter_ns()
            if not self.control:
                _flip()
            # one slice ends where the next begins: every request finished in the run is in one of them
            self.slices.append((state, n1 - n0, c1 - c0, w1 - w0))
            n0, c0, w0 = n1, c1, w1
            state = "off" if state == "on" else "on"
        if not self.control and state == "off":  # ended detached: attach again
            _flip()
        time.sleep(1.5)  # the feeder's last batch (it flushes every second) and the writer's insert of it
        threads, children = _helpers_ns(skip)
        out = {
            "slices": self.slices,
            "threads_ns": threads - threads0,
            "children_ns": children - children0,
            "control": self.control,
        }
        done = os.environ["OLLAMUX_BENCH_SWITCH_FILE"] + ".slices"
        with open(done + ".part", "w", encoding="utf-8") as f:
            f.write(json.dumps(out))
        os.replace(done + ".part", done)


def _drain() -> None:
    """Wait (up to 2 s) for the requests in flight to finish. An answer its handler writes itself (relayed,
    streamed) reaches its client before the handler's `finished`: a client that stops the run on its last
    answer would otherwise see that request in no slice."""
    deadline = time.monotonic() + 2.0
    while _begun[0] > _done[0] and time.monotonic() < deadline:
        time.sleep(0.001)


_run: list[_Sliced] = []


def _slice(_signum: int, _frame: Any) -> None:
    if _run:
        _run.pop().stop.set()
        return
    t = _Sliced(threading.get_native_id())  # signal handlers run in the main thread: the event loop's
    _run.append(t)
    t.start()


_observe.Observers.__init__ = _track  # type: ignore[method-assign]
_observe.Observers.started = _begin  # type: ignore[method-assign]
_observe.Observers.finished = _count  # type: ignore[method-assign]
signal.signal(signal.SIGUSR1, _slice)
