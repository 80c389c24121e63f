"""Which running model to stop to make room for another, and what else to start with it: pure functions.

Residency rules, in order:

- a slot is one running model; `runtime.max_running` of them;
- a pinned model (`runtime.pin: true`) is never evicted (nor idle-stopped: the manager's timers);
- a busy model (requests in flight or waiting) is never evicted: the newcomer waits for a slot;
- a model of an exclusive group (`runtime.groups.NAME.exclusive: true`) runs only with models of its
  groups: before it starts, every running model outside them is stopped (idle ones at once, busy ones
  once their requests end), pinned models excepted;
- otherwise the least recently used idle ready model is evicted;
- with a memory budget (`runtime.memory_budget`), a model starts only when the estimates of the models
  holding memory (`runtime/memory.py`; starting and stopping ones too) and its own fit in it: idle unpinned
  models are evicted, least recently used first, until it does. When it cannot fit even with every one of
  them gone (busy, starting or pinned models hold the memory) nothing is evicted for nothing: the decision
  carries the `Shortfall` the request is refused with. A model bigger than the budget on its own still
  starts once nothing else holds memory (`Decision.over_budget`: the manager warns).

Starting the other members of a model's groups ("members load together") is `companions`: the manager
starts them in the background, in free slots only, so a group never evicts for its own companions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .state import Phase

__all__ = ["Candidate", "Decision", "Group", "Shortfall", "companions", "plan_start"]

_HOLDING = (Phase.STARTING, Phase.READY, Phase.STOPPING)


@dataclass(frozen=True)
class Candidate:
    """What the policy sees of one model."""

    name: str
    phase: Phase
    busy: bool  # requests in flight or waiting for it
    last_used: float
    pinned: bool = False
    memory: int = 0  # bytes it holds (its estimate) while starting, ready or stopping


@dataclass(frozen=True)
class Group:
    """Models that load together (by the names the policy sees them by); `exclusive`: and run alone."""

    name: str
    members: frozenset[str]
    exclusive: bool = False


@dataclass(frozen=True)
class Shortfall:
    """Why a model cannot start within the memory budget: what it needs, and who holds how much (and why)."""

    need: int
    budget: int
    in_use: tuple[tuple[str, int, str], ...]  # (name, bytes, "busy" | "pinned" | "starting" | ...), largest first


@dataclass(frozen=True)
class Decision:
    """`start`: there is room; else `evict` names the model to stop first, or None: wait for room, unless
    `short` says it cannot come (the memory budget). `over_budget`: it starts alone, above the budget."""

    start: bool
    evict: str | None = None
    short: Shortfall | None = None
    over_budget: bool = False


def plan_start(
    models: Iterable[Candidate],
    max_running: int,
    wanted: str,
    groups: Sequence[Group] = (),
    *,
    budget: int | None = None,
    need: int = 0,
) -> Decision:
    """May `wanted` start now, and if not, whom to evict (the rules in the module's docstring).

    Starting and stopping processes hold a slot but are never chosen: one is wanted by a request, the
    other is already going away. A busy model is never chosen; if every slot is busy the caller waits.
    `budget` (None: no memory limit) and `need`, the wanted model's estimate, are in bytes.
    """
    holding: Sequence[Candidate] = [m for m in models if m.name != wanted and m.phase in _HOLDING]
    allowed = _allowed_with(wanted, groups)
    if allowed is not None:
        outsiders = [m for m in holding if m.name not in allowed and not m.pinned]
        idle_out = [m for m in outsiders if m.phase is Phase.READY and not m.busy]
        if idle_out:
            return Decision(start=False, evict=_lru(idle_out))
        if outsiders:
            return Decision(start=False)  # busy, starting or stopping: wait until they are gone
    slot_free = len(holding) < max_running
    fits = budget is None or sum(m.memory for m in holding) + need <= budget
    if slot_free and fits:
        return Decision(start=True)
    idle = [m for m in holding if m.phase is Phase.READY and not m.busy and not m.pinned]
    if budget is not None and not fits:
        # what stays whatever is evicted: stopping models are going away, so they are not in the way
        kept = [m for m in holding if m not in idle and m.phase is not Phase.STOPPING]
        if kept and sum(m.memory for m in kept) + need > budget:
            in_use = sorted(holding, key=lambda m: (-m.memory, m.name))
            return Decision(
                start=False, short=Shortfall(need, budget, tuple((m.name, m.memory, _why(m)) for m in in_use))
            )
    if idle:
        return Decision(start=False, evict=_lru(idle))
    if not slot_free or holding:
        return Decision(start=False)  # busy slots, or stopping models still holding the memory: wait
    return Decision(start=True, over_budget=True)  # alone and still too big: served anyway


def companions(wanted: str, groups: Sequence[Group]) -> list[str]:
    """The other members of `wanted`'s groups, by name: started with it, in free slots."""
    out: set[str] = set()
    for g in groups:
        if wanted in g.members:
            out |= g.members
    out.discard(wanted)
    return sorted(out)


def _allowed_with(wanted: str, groups: Sequence[Group]) -> frozenset[str] | None:
    """The models `wanted` may run beside when one of its groups is exclusive; None: any."""
    exclusive = [g for g in groups if g.exclusive and wanted in g.members]
    if not exclusive:
        return None
    return frozenset().union(*(g.members for g in groups if wanted in g.members))


def _why(m: Candidate) -> str:
    if m.pinned:
        return "pinned"
    if m.phase is not Phase.READY:
        return str(m.phase.value)
    return "busy" if m.busy else "idle"


def _lru(models: Sequence[Candidate]) -> str:
    return min(models, key=lambda m: (m.last_used, m.name)).name
