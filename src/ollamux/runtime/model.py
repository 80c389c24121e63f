"""One managed model: the record its catalogue and its manager share, and the views of it the app reads."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..backends.http import HTTPBackend
from ..config import RuntimeSpec
from ..registry import ModelEntry
from .memory import KVShape
from .process import ChildProcess
from .state import ModelState

__all__ = ["LoadingModel", "ManagedModel", "ModelStatus", "RunningModel"]


@dataclass(frozen=True)
class RunningModel:
    """One line of /api/ps."""

    entry: ModelEntry
    expires_at: float  # unix time
    ctx: int
    size: int
    pid: int
    size_vram: int = 0  # bytes offloaded to a GPU (an estimate: `vram.offloaded_bytes`)


@dataclass(frozen=True)
class LoadingModel:
    """A model whose process is starting: `stage` is "spawning" (the process is being created) or "loading"
    (it runs, reading the model in, until its /health answers); `since` is the unix time of that stage."""

    entry: ModelEntry
    stage: str
    since: float
    ctx: int
    size: int


@dataclass(frozen=True)
class ModelStatus:
    """One managed model as readiness (/health/ready) and the metrics see it.

    `state` is the phase (stopped, starting, ready, stopping, failed), except that a model which crashed
    while ready and is being restarted in the background (`restart: on-failure`) reads "restarting" until
    it is ready again: not a readiness problem, since a request still starts it at once. It reads "failed"
    when it will not come back by itself: `restart: never`, a failed start, or restarts that keep failing
    (`state.ModelState.status` has the rule).
    """

    model: str
    state: str  # stopped, starting, ready, stopping, restarting, failed
    active: int  # requests using its process now
    waiting: int  # requests waiting for it to start (or for a slot to start it in)
    ctx: int | None  # the context it runs with (or was last asked to); None before its first start
    pid: int | None
    expires_at: float | None  # unix time it stops when idle; None while busy or not running
    restarts: int = 0  # restarts after a crash since it last ran healthily (the backoff's exponent)
    restart_at: float | None = None  # unix time the next background restart is due; None: none is scheduled


@dataclass(eq=False)
class ManagedModel:
    """What the catalogue knows of a model (entry, spec, file, trained context, size), then its process."""

    backend: str  # runtime:<model name>
    entry: ModelEntry
    spec: RuntimeSpec
    gguf: Path | None  # the model file, when known (a cmd: model naming one in its arguments too)
    mmproj: Path | None = None  # its vision projector, loaded with it (vision.py pairs them)
    max_ctx: int | None = None  # the context the model was trained for: never start with more
    n_layers: int | None = None  # its repeating layers (GGUF block_count): what n_gpu_layers counts
    kv: KVShape | None = None  # its KV cache's shape (GGUF header): what the memory estimate counts per position
    embedding_only: bool = False  # its GGUF is an embedding model's (no chat): one slot by default (slots.py)
    size: int = 0
    state: ModelState = field(default_factory=ModelState)
    proc: ChildProcess | None = None
    http: HTTPBackend | None = None
    start_task: asyncio.Task[None] | None = None
    stop_task: asyncio.Task[None] | None = None
    restart_task: asyncio.Task[None] | None = None  # the background recovery after a crash, while it runs
    restart_at: float | None = None  # unix time its next background restart is due
    keep_alive: float | None = None  # what the last request asked; None: the model's ttl
    # the arrival number (`ModelManager.ask`) of the request whose keep_alive that is: a request that began
    # earlier and ends later must not undo it (an unload mid-stream stops the model once the streams end)
    keep_alive_asked: int = 0
    # the contexts of the requests waiting to restart it with more than it runs: later requests queue behind
    wider: list[int] = field(default_factory=list)
    # the arrival numbers of requests for other models waiting for the slot this (busy) model holds: requests
    # for it that arrive after them queue behind them, uncounted, so that it drains and can be evicted
    yielding: list[int] = field(default_factory=list)
    unloading: bool = False  # an unload waits for the requests in flight: even a pinned model stops then
    expires_at: float | None = None
    timer: asyncio.TimerHandle | None = None
    removed: bool = False  # its file left the models folder (or its config entry, on a reload)
    stale: bool = False  # a config reload changed its spec: it restarts with it once its requests end
    stage: str = "spawning"  # while starting: what `LoadingModel.stage` says
    stage_since: float = 0.0

    def set_stage(self, stage: str) -> None:
        self.stage, self.stage_since = stage, time.time()

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def log_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.entry.name) + ".log"

    def ctx_for(self, num_ctx: int | None) -> int:
        """The context to run with: the configured one, or more when a request asks for more."""
        base = self.spec.ctx
        if self.spec.cmd is not None and not any("${CTX}" in a for a in self.spec.cmd):
            return base  # the command cannot be told another context: restarting would not help
        want = max(base, num_ctx or 0)
        if self.max_ctx:
            want = max(base, min(want, self.max_ctx))
        return want
