"""What the app reads of the managed models: /api/ps (running and loading) and readiness and metrics (statuses).

Snapshots: each call builds frozen values (`model.RunningModel`, `LoadingModel`, `ModelStatus`) from the records
as they are now, on the loop, so they need no lock and hold nothing the manager changes later.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from .model import LoadingModel, ManagedModel, ModelStatus, RunningModel
from .placement import Placement
from .state import Phase, RestartPolicy
from .vram import offloaded_bytes

__all__ = ["FOREVER", "loading", "running", "statuses"]

# Ollama's "forever" is a duration of MaxInt64 nanoseconds: /api/ps shows an expiry ~292 years ahead
FOREVER = 9_223_372_036.0


def running(models: Iterable[ManagedModel], placement: Placement, *, gpu: bool) -> list[RunningModel]:
    """The ready models, with when each stops if left idle and what it holds in memory (and on a GPU)."""
    out = []
    now = time.time()
    for m in models:
        if m.state.phase is not Phase.READY or m.proc is None:
            continue
        if m.state.busy or m.expires_at is None:
            ka = -1.0 if m.spec.pin else m.keep_alive if m.keep_alive is not None else m.spec.ttl
            expires = now + FOREVER if ka < 0 else now + ka
        else:
            expires = m.expires_at
        ngl = dict(m.spec.options).get("n_gpu_layers", -1)  # llama.cpp's default: as many as fit
        vram = offloaded_bytes(m.size, m.n_layers, int(ngl), gpu=gpu) if m.spec.cmd is None else 0
        out.append(
            RunningModel(
                entry=m.entry,
                expires_at=expires,
                ctx=m.state.ctx,
                size=placement.memory_of(m),
                pid=m.proc.pid,
                size_vram=vram,
            )
        )
    return out


def loading(models: Iterable[ManagedModel], placement: Placement) -> list[LoadingModel]:
    """The models whose process is starting, with the stage it is at (what /api/ps lists as `loading`)."""
    return [
        LoadingModel(entry=m.entry, stage=m.stage, since=m.stage_since, ctx=m.state.ctx, size=placement.memory_of(m))
        for m in models
        if m.state.phase is Phase.STARTING and not m.removed
    ]


def statuses(models: Iterable[ManagedModel], policy: RestartPolicy) -> list[ModelStatus]:
    """Every managed model's state, by name (a model whose file left the folder, once stopped, is gone)."""
    out = []
    for m in sorted(models, key=lambda m: m.name):
        st = m.state
        if m.removed and not st.holds_slot:
            continue
        out.append(
            ModelStatus(
                model=m.name,
                state=st.status(policy),
                active=st.active,
                waiting=st.waiting,
                ctx=st.ctx or None,
                pid=m.proc.pid if m.proc is not None else None,
                expires_at=m.expires_at,
                restarts=st.restarts,
                restart_at=m.restart_at if st.recovering else None,  # a stop calls off the sleep's restart
            )
        )
    return out
