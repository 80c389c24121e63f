"""Which running model to stop to make room for another: a pure function of a snapshot."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .state import Phase

__all__ = ["Candidate", "Decision", "plan_start"]


@dataclass(frozen=True)
class Candidate:
    """What the policy sees of one model."""

    name: str
    phase: Phase
    busy: bool  # requests in flight or waiting for it
    last_used: float


@dataclass(frozen=True)
class Decision:
    """`start`: a slot is free; else `evict` names the model to stop first, or None: wait for one."""

    start: bool
    evict: str | None = None


def plan_start(models: Iterable[Candidate], max_running: int, wanted: str) -> Decision:
    """May `wanted` start now, and if not, whom to evict: the least recently used idle ready model.

    Starting and stopping processes hold a slot but are never chosen: one is wanted by a request, the
    other is already going away. A busy model is never chosen; if every slot is busy the caller waits.
    """
    holding: Sequence[Candidate] = [
        m for m in models if m.name != wanted and m.phase in (Phase.STARTING, Phase.READY, Phase.STOPPING)
    ]
    if len(holding) < max_running:
        return Decision(start=True)
    idle = [m for m in holding if m.phase is Phase.READY and not m.busy]
    if not idle:
        return Decision(start=False)
    victim = min(idle, key=lambda m: (m.last_used, m.name))
    return Decision(start=False, evict=victim.name)
