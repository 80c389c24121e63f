"""Whether a managed model may start now: the policy's inputs read from the model records, and its refusals in words.

`policy.plan_start` decides on plain values (`Candidate`, `Group`); this turns the shared `ManagedModel` records
into them at the moment of the decision (each one's slots and estimated memory, the groups resolved to backends
now) and words what it says for the operator log and the 503 a request gets.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from ..config import RuntimeSettings
from ..registry import Registry
from .memory import estimate
from .model import ManagedModel
from .policy import Candidate, Decision, Group, Shortfall, plan_start
from .slots import slots_for

__all__ = ["Placement", "gib"]

log = logging.getLogger("ollamux.runtime")


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


class Placement:
    """The slots and memory of each model, and the start decision over all of them (one app's models)."""

    def __init__(self, models: dict[str, ManagedModel], settings: RuntimeSettings, registry: Registry) -> None:
        self.models = models  # the manager's dict, shared: read at each decision
        self.settings = settings
        self.registry = registry

    def slots_of(self, m: ManagedModel) -> int:
        """The requests `m` serves at once (`slots.slots_for`: its own parallel, runtime.parallel, or 4)."""
        return slots_for(m.spec, self.settings.parallel, embedding_only=m.embedding_only)

    def memory_of(self, m: ManagedModel, ctx: int | None = None) -> int:
        """The estimated resident bytes of `m` running with context `ctx` per slot (None: the one it runs or
        last ran with, else the one it would start with): `memory.estimate`, what the budget counts. Every
        slot holds `ctx` positions of KV cache, as the engine is started (slots.py has why)."""
        ctx = ctx or m.state.ctx or m.ctx_for(None)
        return estimate(m.size, m.kv, ctx * self.slots_of(m), dict(m.spec.options))

    def candidates(self) -> list[Candidate]:
        return [
            Candidate(
                name=b,
                phase=m.state.phase,
                busy=m.state.busy,
                last_used=m.state.last_used,
                pinned=m.spec.pin,
                memory=self.memory_of(m) if m.state.holds_slot else 0,
            )
            for b, m in self.models.items()
        ]

    def groups(self) -> list[Group]:
        """`runtime.groups`, their members resolved to backends now (a models folder model may come later)."""
        out = []
        for g in self.settings.groups:
            members = set()
            for name in g.members:
                entry = self.registry.find(name)
                if entry is not None and entry.backend in self.models:
                    members.add(entry.backend)
            out.append(Group(name=g.name, members=frozenset(members), exclusive=g.exclusive))
        return out

    def plan(self, backend: str, ctx: int | None = None) -> Decision:
        """The policy's decision for starting `backend` with context `ctx` (None: the one it would start with)."""
        m = self.models[backend]
        need = self.memory_of(m, ctx or m.ctx_for(None))
        budget = self.settings.memory_budget
        return plan_start(
            self.candidates(), self.settings.max_running, backend, self.groups(), budget=budget, need=need
        )

    def drain_target(self, backend: str, ctx: int | None = None) -> str | None:
        """The busy model a start of `backend` would evict were it idle (None: none would do): the one a
        request waiting for a slot makes later requests queue behind it for, so that it drains."""
        m = self.models[backend]
        need = self.memory_of(m, ctx or m.ctx_for(None))
        idle = [replace(c, busy=False) for c in self.candidates()]
        budget = self.settings.memory_budget
        decision = plan_start(idle, self.settings.max_running, backend, self.groups(), budget=budget, need=need)
        return decision.evict

    def short_message(self, m: ManagedModel, short: Shortfall) -> str:
        held = ", ".join(f"'{self.models[b].name}' {gib(n)} ({why})" for b, n, why in short.in_use)
        return (
            f"model '{m.name}' needs about {gib(short.need)} of memory, which does not fit in "
            f"runtime.memory_budget ({gib(short.budget)}): {held or 'nothing'} in use, and the models holding it "
            "cannot be stopped now; try again later"
        )

    def no_room(self, m: ManagedModel, decision: Decision) -> str:
        """Why a start that never evicts (a restart, a preload, a companion) does not happen."""
        holding = sum(1 for o in self.models.values() if o is not m and o.state.holds_slot)
        if decision.short is not None or holding < self.settings.max_running:
            return f"it does not fit in runtime.memory_budget ({gib(self.settings.memory_budget or 0)})"
        return f"no free slot (runtime.max_running is {self.settings.max_running})"

    def warn_over_budget(self, m: ManagedModel, ctx: int) -> None:
        log.warning(
            "model '%s': its estimated %s exceeds runtime.memory_budget (%s); starting it anyway, as nothing "
            "else is running",
            m.name,
            gib(self.memory_of(m, ctx)),
            gib(self.settings.memory_budget or 0),
        )
